"""Start the page (`run_metasegnet.py --serve`): Gradio writes only under the output folder."""
from __future__ import annotations

import os
import tempfile

from segmenter.api import Segmenter

MAX_FILE_SIZE = "30mb"  # per upload; larger files are refused by the page


def keep_files_in(out_dir: str) -> str:
    """Make the output folder the process's only place to write: Gradio's upload cache and the
    temporary files of TensorFlow's autograph go into it (call before building the model).

    Args:
        out_dir: the server's output folder (created).

    Returns:
        its absolute path.
    """
    root = os.path.abspath(out_dir)
    for sub in (".uploads", ".tmp"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = os.path.join(root, ".uploads")  # read when Gradio imports
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    tempfile.tempdir = os.path.join(root, ".tmp")
    return root


def launch(seg: Segmenter, *, host: str, port: int, out_dir: str, block: bool = True):
    """Serve the page for `seg` on host:port.

    Gradio's own upload cache goes to `<out_dir>/.uploads` (`keep_files_in`), so nothing is
    written outside `out_dir`; Gradio reads it when imported, hence the late import.

    Args:
        seg: the loaded init.
        host: address to bind (127.0.0.1 unless the user opens it up).
        port: port to bind.
        out_dir: the server's output folder (created).
        block: wait until the server stops (False returns the running page, for tests).

    Returns:
        the launched Gradio Blocks.
    """
    root = keep_files_in(out_dir)
    from serve.app import build_page

    seg.warm_up()  # compiled before the first person presses Segment
    page = build_page(seg, root)
    page.queue(default_concurrency_limit=1)
    page.launch(server_name=host, server_port=port, allowed_paths=[root], share=False,
                max_file_size=MAX_FILE_SIZE, show_error=True, inbrowser=False,
                prevent_thread_lock=not block)
    return page
