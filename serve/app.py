"""The Gradio page: paint a few examples, add the images to segment, press Segment.

The page wires `serve.session`'s handlers to components; everything it does is there. The model
is shared by every browser session: Segment runs in Gradio's queue, one at a time (a second
press waits with its place shown), outside the page's event loop.

Whatever goes wrong reaches the page as one line on its message line (and a toast): a bad input
or a failed write (`UserError`), a diverged adaptation (`TrainingError`), a stopping server, and
anything unexpected (its traceback goes to the server's log, never to the browser). Uploads reach
the handlers undecoded (`serve.uploads`), and the steps and learning rate as typed, so the
handlers' own checks and messages apply to them.
"""
from __future__ import annotations

import functools
import threading
import time

from absl import logging
import gradio as gr

from errors import TrainingError, UserError
from segmenter import outputs
from segmenter.api import Segmenter
from serve import session as handlers
from serve.privacy import key_of
from serve.retention import Sessions
from serve.session import PressAbandoned, Session
from serve.uploads import undecoded

BRUSH = gr.Brush(colors=["#ff0000"], default_color="#ff0000", color_mode="fixed",
                 default_size=12)
# An explicit empty value: a plain None did not always clear the editor (seen in chromium
# after the second example).
EMPTY_EDITOR = {"background": None, "layers": [], "composite": None}


def _session(state: Session | None, request: gr.Request, sessions: Sessions) -> Session:
    """The request's session, new on its first use; another browser's is refused."""
    key = key_of(request)
    if state is None:
        return sessions.add(getattr(request, "session_hash", None) or "",
                            Session(sessions.root, owner=key))
    if state.owner != key:
        raise UserError("This page session belongs to another browser; reload the page to "
                        "start your own.")
    return state


def header(seg: Segmenter) -> str:
    """Which init the page holds, what it was trained on, and its adaptation settings."""
    a = seg.settings.adapt
    init = (f"`{seg.init.path}`: {seg.init.trained_on()}" if seg.init else "built weights")
    return (f"## Segment your own object from a few examples\n"
            f"**Init** {init}.  \n"
            f"It adapts to your examples in {a.steps} steps at learning rate {a.learning_rate:g} "
            f"({seg.image_size} px inputs; masks come back at each image's own size).")


def as_message(fn, status):
    """Wrap a handler: whatever goes wrong becomes one line on the page's message line `status`
    (and a toast); the other outputs stay as they are, and the server keeps serving.

    Args:
        fn: the handler (returns a dict of component -> value).
        status: the message component.

    Returns:
        the wrapped handler.
    """
    @functools.wraps(fn)  # Gradio reads the signature for its request, progress and event
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UserError, TrainingError, PressAbandoned) as e:
            message = str(e) or "The server is stopping; nothing of this press was written."
        except Exception:  # noqa: BLE001 (the browser gets a line, the log the traceback)
            logging.exception(f"The page's {fn.__name__} failed")
            message = (f"Something went wrong on the server while handling "
                       f"{fn.__name__.replace('_', ' ')}; its log says what. Nothing was "
                       f"changed; try again.")
        gr.Warning(message)
        return {status: f"**{message}**"}
    return wrapped


def build_page(seg: Segmenter, root: str, *, sessions: Sessions | None = None,
               stopping: threading.Event | None = None, delete_cache=None) -> gr.Blocks:
    """The page around one loaded init.

    Args:
        seg: the loaded init (from_checkpoint).
        root: the server's output folder (one subfolder per browser session).
        sessions: the server's sessions (default: new, files kept 24 h).
        stopping: set when the server stops: a Segment press in progress is abandoned.
        delete_cache: Gradio's (every, age) in seconds for its cached copies, or None.

    Returns:
        the Gradio Blocks, not yet launched.
    """
    sessions = sessions or Sessions(root, keep_hours=24.0)
    stopping = stopping or threading.Event()
    a = seg.settings.adapt

    def shown(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):  # status, the page's message line, is made below
            return as_message(fn, status)(*args, **kwargs)
        return wrapped

    def check_stop(fraction, text, progress):
        if stopping.is_set():
            raise PressAbandoned("The server is stopping: this press was abandoned and nothing "
                                 "of it was written.")
        progress(fraction, desc=text)

    @shown
    def add_example(state, editor, uploaded, request: gr.Request):
        state = _session(state, request, sessions)
        editor = editor or {}
        message = handlers.add_example(state, editor.get("background"), editor.get("layers"),
                                       uploaded)
        return {session: state, examples: handlers.example_gallery(state), status: message,
                editor_box: EMPTY_EDITOR, mask_box: None}

    @shown
    def remove_example(state, index, request: gr.Request):
        state = _session(state, request, sessions)
        message = handlers.remove_example(state, -1 if index is None else index)
        return {session: state, examples: handlers.example_gallery(state), status: message,
                selected: None}

    def select_example(evt: gr.SelectData):
        return evt.index

    @shown
    def add_images(state, paths, request: gr.Request):
        state = _session(state, request, sessions)
        return {session: state, status: handlers.add_images(state, paths)}

    @shown
    def clear_images(state, request: gr.Request):
        state = _session(state, request, sessions)
        state.use()
        state.queries, state.query_files, state.results = [], {}, []
        return {session: state, status: "No images to segment.", results: [], masks_zip: None,
                weights_zip: None}

    @shown
    def segment(state, steps_value, lr_value, formats_value, request: gr.Request,
                progress=gr.Progress()):
        state = _session(state, request, sessions)
        started = time.monotonic()
        masks, weights = handlers.segment(
            state, seg, steps=steps_value, learning_rate=lr_value, formats=formats_value,
            on_progress=lambda fraction, text: check_stop(fraction, text, progress))
        message = (f"Run {state.runs}: segmented {len(state.results)} image(s) from "
                   f"{len(state.examples)} example(s) in {time.monotonic() - started:.1f} s. "
                   f"Click a result to correct it and add it to the examples.")
        return {session: state, results: handlers.gallery(state), status: message,
                masks_zip: masks, weights_zip: weights}

    @shown
    def pick_result(state, evt: gr.SelectData, request: gr.Request):
        state = _session(state, request, sessions)
        image, layer = handlers.result_layer(state, evt.index)
        name = state.results[evt.index].name
        return {editor_box: {"background": image, "layers": [layer], "composite": None},
                status: f"{name} is in the editor: correct it with the brush and the eraser, "
                        f"then press Add example."}

    def ended(request: gr.Request):
        sessions.end(getattr(request, "session_hash", None) or "")  # its memory, now

    with gr.Blocks(title="metaseg: segment your own object", delete_cache=delete_cache) as page:
        session = gr.State(None)
        selected = gr.State(None)
        gr.Markdown(header(seg), elem_id="init")
        with gr.Row():
            with gr.Column():
                gr.Markdown("### 1. Examples (1 to 10)\nUpload a photo and paint the object with "
                            "the brush (the eraser removes paint), or upload its mask below; "
                            "then press **Add example**.")
                editor_box = gr.ImageEditor(label="Example: paint the object", type="numpy",
                                        sources=("upload",), transforms=(), layers=False,
                                        brush=BRUSH, eraser=gr.Eraser(default_size=12),
                                        format="png", elem_id="editor")
                mask_box = gr.Image(label="... or upload its mask instead (optional)",
                                    type="numpy", sources=("upload",), elem_id="mask-upload",
                                    height=160)
                with gr.Row():
                    add_button = gr.Button("Add example", elem_id="add-example")
                    remove_button = gr.Button("Remove the selected example")
                examples = gr.Gallery(label="Examples (click one to select it)", columns=5,
                                      fit_columns=False, height=180, allow_preview=False,
                                      object_fit="contain", elem_id="examples")
            with gr.Column():
                gr.Markdown("### 2. Images to segment\nAdd as many as you like, then press "
                            "**Segment**.")
                files = gr.File(label="Images to segment", file_count="multiple",
                                type="filepath", height=220, elem_id="images")
                with gr.Accordion("Adaptation settings (defaults from the checkpoint)",
                                  open=False):
                    steps = gr.Number(label="Steps", value=a.steps, precision=0, minimum=0,
                                      maximum=handlers.MAX_STEPS, elem_id="steps")
                    learning_rate = gr.Number(label="Learning rate", value=a.learning_rate,
                                              elem_id="learning-rate")
                for field in (steps, learning_rate):  # as typed: the handler checks them
                    field.preprocess = lambda value: value
                mask_formats = gr.CheckboxGroup(
                    list(outputs.FORMATS), value=["png"], label="Masks download formats (as "
                    "--mask_format: PNG masks, overlays, COCO RLE, YOLO-seg, a Label Studio "
                    "import)", elem_id="mask-formats")
                segment_button = gr.Button("Segment", variant="primary", elem_id="segment")
                status = gr.Markdown(elem_id="status")
                results = gr.Gallery(label="Results (% of each image that is the object): click "
                                           "one to correct it", columns=4,
                                     fit_columns=False, height=340, object_fit="contain",
                                     allow_preview=False, elem_id="results")
                with gr.Row():
                    masks_zip = gr.File(label="Masks (zip, in the formats chosen, each at its "
                                              "image's size)",
                                        elem_id="masks-zip")
                    weights_zip = gr.File(label="Adapted weights (zip; from_checkpoint / "
                                                "--pretrained)", elem_id="weights-zip")

        # Progress shows on the message line, so a refused example stays visible to fix.
        add_button.click(add_example, [session, editor_box, mask_box],
                         [session, examples, status, editor_box, mask_box],
                         show_progress_on=status)
        examples.select(select_example, None, selected)
        remove_button.click(remove_example, [session, selected],
                            [session, examples, status, selected], show_progress_on=status)
        files.upload(add_images, [session, files], [session, status], show_progress_on=status)
        files.clear(clear_images, [session], [session, status, results, masks_zip, weights_zip])
        segment_button.click(segment, [session, steps, learning_rate, mask_formats],
                             [session, results, status, masks_zip, weights_zip],
                             concurrency_limit=1, concurrency_id="model",
                             show_progress_on=[status, results])
        results.select(pick_result, [session], [editor_box, status], show_progress_on=status)
        page.unload(ended)
    undecoded(editor_box, editor=True)
    undecoded(mask_box)
    return page
