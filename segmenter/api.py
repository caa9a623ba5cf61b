"""Segment an object from a few examples: one init, `fit` on the examples, `predict` the rest.

    seg = from_checkpoint("demo_runs/reptile")         # any init the tool writes or reads
    losses = seg.fit(images, masks)                    # arrays or PIL images, any size
    masks = seg.predict(more_images)                   # uint8 0/255, each at its own size
    seg.save("my_object_weights"); seg.export("my_object.keras")

`fit` always starts from the init (a second call does not continue from the first), with a
generator keyed by the seed and the number of examples, so the same examples give the same
weights. The adapted state stays in the model for `predict`, `save` and `export`. What is
snapshotted: every model variable (weights, batch-norm statistics, dropout seeds) and the inner
optimizer's, once, when the init is loaded.

A fit whose loss or weights go non-finite, whose weights grow 1000-fold (`meta.divergence`) or
whose loss ends tenfold above where it started raises `errors.DivergenceError` and puts the init
back; `predict`, `save` and `export` refuse until the next fit or `reset`, so nothing of it is
used or saved. Threads: see `Segmenter`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from typing import Callable, Mapping

from absl import logging
import keras
import numpy as np
from PIL import Image

from baselines.pretrain import load_pre_trained
from errors import DivergenceError, UserError
from devices.precision import use_jit
from meta.adaptation import FIELDS, LOOP_SETTINGS
from meta.divergence import DivergenceGuard
from meta.inner import InnerLoop, adapt
from meta.state import Snapshot, full_state
from models.build import build_model
from models.losses import make_loss
from models.mtl import set_mtl_mode
from segmenter import keys, outputs, settings as settings_lib, tree
from segmenter.images import as_examples, as_list, as_rgb, mask_warnings, \
    probability_at_size, resize_image, resize_mask
from segmenter.adapted_state import AdaptedState
from segmenter.inits import Init, find_init
from segmenter.settings import Settings
from storage import checkpoint
from storage.export import export
from report.progress import Progress
from storage.tf1_checkpoint import restore_tf1_checkpoint

PREDICT_BATCH = 8
# A fit whose loss ends (the mean of its last quarter of steps) above both LOSS_GROWTH times its
# first step's and LOSS_FLOOR has diverged: every pixel confidently wrong (cross-entropy
# saturates near 16) while the weights may stay bounded. Noisy small losses stay under the floor.
LOSS_GROWTH = 10.0
LOSS_FLOOR = 1.0
LONG_LIST = 4 * PREDICT_BATCH  # predict shows a progress bar from this many images on
# Settings `configure` may change: the adaptation's, but those built into the compiled step
# (meta.adaptation.LOOP_SETTINGS: optimizer type, weight decay, augmentation, adapted variables).
RECONFIGURABLE = tuple(name for name in FIELDS if name not in LOOP_SETTINGS)


def make_loop(model: keras.Model, settings: Settings) -> InnerLoop:
    """The compiled inner loop `fit` runs: the settings' loss, optimizer and augmentation.

    Args:
        model: the built model holding the init.
        settings: its settings.

    Returns:
        InnerLoop (adapting only the head when settings.adapt.head_only).
    """
    return InnerLoop(model, make_loss(settings.loss, model), settings.adapt,
                     jit_compile=use_jit("auto"))


def _one_at_a_time(method):
    """Run the method holding the Segmenter's lock (re-entrant: methods call each other)."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)
    return locked


class Segmenter:
    """An init ready to adapt to a few examples and segment new images.

    Threads: every method holds `lock`, so calls from several threads are serialised (one runs
    at a time, none interleaves inside the model). The adapted weights are one per Segmenter: when
    another thread's `fit` or `reset` has replaced the weights this thread's `fit` adapted,
    `predict`, `save` and `export` raise UserError instead of using the other thread's weights.
    Hold `with seg.lock:` around a thread's fit and predict to keep them together (the page
    does), or give each thread its own Segmenter. A thread that never fits predicts with whatever
    the model holds (fit once, then predict from many threads).

    Args:
        loop: the inner loop whose model holds the init.
        settings: the model and adaptation settings (and their sources).
        init: the init it was loaded from (None for weights built here, e.g. a random init).
    """

    def __init__(self, loop: InnerLoop, settings: Settings, init: Init | None = None):
        self.loop = loop
        self.settings = settings
        self.init = init
        self.warnings: list[str] = []  # of the last fit
        self.steps_taken = 0
        self.num_examples = 0
        self._examples_digest: str | None = None  # of the last fit's examples
        self._init_digest: str | None = None  # of the init's weight files, computed once
        self._init_state = Snapshot(full_state(loop.model, [loop.optimizer]), name="init")
        self._init_state.save()
        self._state = AdaptedState()
        self._guard = DivergenceGuard(loop.variables, loop.model.variables)

    @property
    def lock(self):
        """The re-entrant lock every method holds; hold it to keep a fit and a predict together."""
        return self._state.lock

    @property
    def model(self) -> keras.Model:
        """The Keras model (the adapted one after `fit`)."""
        return self.loop.model

    @property
    def image_size(self) -> int:
        """The side of the square the model sees; images are resized to it and back."""
        return self.settings.model.image_size

    def describe(self) -> str:
        """Which init this is, what it was trained on, and every setting with its source."""
        head = (f"Init: {self.init.path} ({self.init.trained_on()})" if self.init
                else "Init: weights built here (no checkpoint)")
        return "\n".join([head, "Settings:"] + [f"  {line}" for line in self.settings.lines()])

    @_one_at_a_time
    def configure(self, **overrides) -> Settings:
        """Change adaptation settings for later `fit` calls (e.g. steps, learning_rate).

        Args:
            **overrides: settings of RECONFIGURABLE.

        Returns:
            the new settings.

        Raises:
            UserError: a setting that needs the init loaded again (from_checkpoint), or a bad
                value.
        """
        fixed = sorted(set(overrides) - set(RECONFIGURABLE))
        if fixed:
            raise UserError(f"{fixed} cannot change after loading; pass them to "
                            f"from_checkpoint. configure takes {', '.join(RECONFIGURABLE)}.")
        if overrides.get("aug_rate", 0) > 0 and self.loop.augment is None:
            raise UserError("This init was loaded without augmentation (aug_rate 0); pass "
                            "aug_rate to from_checkpoint to adapt with it.")
        adapt_settings = dataclasses.replace(self.settings.adapt, **overrides)
        sources = {**self.settings.sources, **{k: settings_lib.OVERRIDE for k in overrides}}
        self.settings = dataclasses.replace(self.settings, adapt=adapt_settings, sources=sources)
        return self.settings

    @_one_at_a_time
    def warm_up(self) -> None:
        """Compile the adaptation and prediction steps now, so the first `fit` does not wait.

        One step on a blank example, then the init is put back.
        """
        size = self.image_size
        mask = np.zeros((1, size, size), np.uint8)
        mask[:, : size // 2] = 1
        one_step = dataclasses.replace(self.settings.adapt, steps=1, batch_size=1)
        adapt(self.loop, np.zeros((1, size, size, 3), np.uint8), mask, one_step,
              np.random.default_rng(0))
        self.loop.predict(np.zeros((1, size, size, 3), np.uint8))
        self.reset()

    @_one_at_a_time
    def reset(self) -> None:
        """Put the init back (every model variable and the optimizer state)."""
        self._init_state.restore()
        self.steps_taken = self.num_examples = 0
        self._examples_digest = None
        self._state.diverged = None
        self._state.replaced(by_fit=False)

    @_one_at_a_time
    def fit(self, images, masks, *, progress: Callable[[int, int], None] | None = None
            ) -> np.ndarray:
        """Adapt the init to the examples (always from the init, never from an earlier fit).

        Args:
            images: the example images: numpy arrays or PIL images, any size and mode.
            masks: one mask per image, its size (0/255, 0/1, bool, coloured or alpha masks).
            progress: called with (steps done, steps in all) during the adaptation.

        Returns:
            float32 (steps,) the loss of every adaptation step.

        Raises:
            UserError: no examples, a count mismatch, or an unusable image or mask.
            DivergenceError: the loss or the weights went non-finite or ran away; the init is
                back, and predict / save / export refuse until the next fit or reset.
        """
        pairs = as_examples(images, masks)
        self.warnings = mask_warnings([mask for _, mask in pairs])
        for line in self.warnings:
            logging.warning(line)
        size = self.image_size
        x = np.stack([resize_image(image, size) for image, _ in pairs])
        y = np.stack([resize_mask(mask, size, size) for _, mask in pairs])
        adaptation = self.settings.adapt
        self.reset()
        rng = np.random.default_rng([int(adaptation.seed), len(x)])
        try:
            result = adapt(self.loop, x, y, adaptation, rng, progress=progress)
        except BaseException:  # e.g. a progress callback that stops the fit: the init is back
            self.reset()
            raise
        losses = np.asarray(result.losses, np.float32)
        self._state.replaced(by_fit=True)
        self._check_divergence(losses, adaptation)
        self.steps_taken, self.num_examples = int(result.steps_taken), len(x)
        self._examples_digest = keys.examples_digest(*zip(*pairs))
        return losses

    @_one_at_a_time
    def key(self, images=None, masks=None) -> tuple[str, dict]:
        """The key of the current weights (segmenter.keys): of the init as it is, or after the
        last `fit`, or, given examples, after fitting them (the same examples and settings give
        the same weights, so saved weights with this key need no fit).

        Returns:
            (key, {"init", "examples", "settings"}: the digests it is made of).
        """
        if self._init_digest is None:
            self._init_digest = keys.weights_digest(self.init.weights) if self.init else "built"
        examples = keys.examples_digest(*zip(*as_examples(images, masks))) \
            if images is not None else self._examples_digest
        parts = {"init": self._init_digest, "examples": examples or "none",
                 "settings": keys.settings_digest(self.settings.to_config())}
        return keys.key_of(parts), parts

    @_one_at_a_time
    def load_adapted(self, directory: str, key: str) -> bool:
        """Load weights `save` wrote with this key (adapted to the examples the key names),
        instead of fitting them again.

        Args:
            directory: a folder of fine-tuned weights.
            key: the key they must have (`key(images, masks)`).

        Returns:
            True when they were loaded; False when the folder holds none with that key.
        """
        try:
            state = checkpoint.read_state(directory)
        except (FileNotFoundError, ValueError):
            return False
        if state.get("kind") != "fine_tuned" or state.get("key") != key:
            return False
        self.reset()
        checkpoint.load_checkpoint(directory, {"model": list(self.model.variables)},
                                   skip=("final_dropout/rate",))
        self.steps_taken, self.num_examples = int(state["step"]), int(state.get("examples", 0))
        self._examples_digest = state.get("key_parts", {}).get("examples")
        self._state.replaced(by_fit=True)  # this thread's adaptation, as if it had fitted
        return True

    @_one_at_a_time
    def predict_folder(self, images: str, out: str, *, formats=("png",), restart: bool = False,
                       category: str | None = None, truth: str | None = None,
                       batch_size: int = PREDICT_BATCH, progress: bool = True,
                       flag: str = "the masks folder", **details) -> dict:
        """Segment a folder tree of any size into `out`, resumably (segmenter.tree): memory does
        not grow with the number of images, each file is written whole, a rerun skips what is
        done, and files metaseg did not write are never deleted.

        Args:
            images: the images' folder (searched at any depth).
            out: the masks folder; it mirrors the images' tree.
            formats: any of png, overlay, coco, yolo, label_studio (segmenter.outputs).
            restart: replace masks another init, other examples or settings wrote there.
            category: the object's name in COCO and Label Studio files (default "object").
            truth: a tree of `<stem>.png` ground-truth masks mirroring `images`: those images
                are scored (IoU).
            batch_size: images per model call.
            progress: a progress bar (images/s and time left) on stderr.
            flag: how to name `out` in messages.
            **details: JSON-serializable facts for summary.json (e.g. task="camel").

        Returns:
            the summary written to `out`/summary.json (without its per-image entries).
        """
        self._state.check_usable("predict_folder")
        key, parts = self.key()
        parts = {**parts, "category": category}
        bar: dict = {}

        def on_image(done, total, skipped):
            if not progress:
                return
            if not bar:  # made at the first image: the total and what a rerun skips are known
                bar.update(progress=Progress(total, "segmenting", initial=done - 1),
                           start=time.monotonic(), first=done - 1)
            seconds = max(time.monotonic() - bar["start"], 1e-9)
            bar["progress"].update(1, images_per_s=(done - bar["first"]) / seconds,
                                   skipped=skipped)

        result = tree.predict_tree(
            lambda x: self.loop.predict(x).numpy()[..., 1], self.image_size, images, out,
            formats=formats, key=key, parts=parts, restart=restart, batch_size=batch_size,
            truth_dir=truth, flag=flag, on_image=on_image)
        if bar:
            bar["progress"].close()
        config = self.settings.to_config()
        ious = result.pop("ious")
        summary = {"format": tree.SUMMARY_FORMAT, "key": key, "key_parts": parts,
                   "formats": list(formats), **{k: v for k, v in result.items() if k != "rels"},
                   "mean_iou": float(np.mean(list(ious.values()))) if ious else None,
                   "init": self.init.path if self.init else None,
                   "init_trained_on": self.init.trained_on() if self.init else None,
                   "steps": int(self.steps_taken), "warnings": list(self.warnings),
                   "schedule": config["adapt"], "model": config["model"],
                   "loss": config["loss"], "sources": dict(self.settings.sources), **details}
        outputs.write_summary(out, result.pop("rels"), summary)
        return summary

    def _check_divergence(self, losses: np.ndarray, adaptation) -> None:
        """Raise DivergenceError, the init put back, when the fit's loss or weights went bad."""
        bad = [i for i, loss in enumerate(losses) if not np.isfinite(loss)]
        loss = float(losses[bad[0]]) if bad else float(losses[-1]) if len(losses) else 0.0
        what = self._guard.problem(loss, f"loss at step {bad[0] + 1}" if bad else "loss")
        if what is None and len(losses) > 1:
            ending = float(np.mean(losses[-max(1, len(losses) // 4):]))
            if ending > max(LOSS_GROWTH * float(losses[0]), LOSS_FLOOR):
                what = f"the loss rose from {losses[0]:.3g} to {ending:.3g}"
        if what is None:
            return
        self.reset()  # the runaway weights are dropped at once
        schedule = "" if adaptation.scheduler in ("fixed", "constant") else \
            f" ({adaptation.scheduler} schedule)"
        message = (f"the adaptation diverged ({what}) with learning_rate "
                   f"{adaptation.learning_rate:g}{schedule} over {adaptation.steps} steps; nothing "
                   f"of it is kept. Lower the learning rate (or the steps) and fit again.")
        self._state.diverged = f"the last fit diverged: {message}"
        raise DivergenceError(message[0].upper() + message[1:])

    @_one_at_a_time
    def predict(self, images, *, probabilities: bool = False, batch_size: int = PREDICT_BATCH,
                progress: Callable[[int, int], None] | bool | None = None):
        """Segment images with the current (adapted, or the init's) weights.

        Args:
            images: one image or a list (numpy arrays or PIL images, any size and mode).
            probabilities: return float32 foreground probabilities instead of masks.
            batch_size: images per model call.
            progress: a (done, total) callback; True / False forces a progress bar on stderr
                on / off (default: on from LONG_LIST images).

        Returns:
            per image a uint8 (H, W) mask in {0, 255} (or float32 probabilities) at that image's
            own size; a single image gives a single array.
        """
        self._state.check_usable("predict")
        single = isinstance(images, Image.Image) or (isinstance(images, np.ndarray)
                                                      and images.ndim < 4)
        items = as_list(images, "images")
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1. Received: {batch_size}")
        bar = Progress(len(items), "segmenting") if progress is True or (
            progress is None and len(items) >= LONG_LIST) else None
        out = []
        for start in range(0, len(items), batch_size):
            originals = [as_rgb(image, f"image {start + i + 1}")
                         for i, image in enumerate(items[start:start + batch_size])]
            batch = np.stack([resize_image(image, self.image_size) for image in originals])
            foreground = self.loop.predict(batch).numpy()[..., 1]
            for prob, original in zip(foreground, originals):
                resized = probability_at_size(prob, *original.shape[:2])
                out.append(resized if probabilities else
                           np.where(resized >= 0.5, np.uint8(255), np.uint8(0)))
            if bar is not None:
                bar.update(len(originals))
            if callable(progress):
                progress(len(out), len(items))
        if bar is not None:
            bar.close()
        return out[0] if single and out else out

    @_one_at_a_time
    def save(self, directory: str, **details) -> str:
        """Write the current weights as a checkpoint `from_checkpoint` and `--pretrained` load.

        Args:
            directory: a new or empty folder, or one holding earlier fine-tuned weights.
            **details: JSON-serializable facts kept in its state.json (e.g. task="camel").

        Returns:
            the checkpoint folder written.

        Raises:
            DivergenceError: the last fit diverged (nothing of it is saved).
        """
        self._state.check_usable("save")
        checkpoint.check_fine_tuned_dir(directory, "the weights folder")
        init = f"{self.init.path} ({self.init.trained_on()})" if self.init else "built weights"
        key, parts = self.key()
        return checkpoint.save_checkpoint(
            directory, self.steps_taken, {"model": list(self.model.variables)}, rng_state=None,
            config_json=json.dumps(self.settings.to_config(), indent=2, sort_keys=True),
            keep=None, extra={"kind": "fine_tuned", "init": init, "key": key,
                              "key_parts": parts, "examples": self.num_examples, **details})

    @_one_at_a_time
    def export(self, path: str, format: str = "keras") -> str:  # noqa: A002 (the flag's word)
        """Write the current model where other tools load it (`storage.export`).

        Args:
            path: a `.keras` / `.tflite` file, or a folder (it gets model.keras, saved_model/ or
                model.tflite).
            format: keras | saved_model (uint8 images -> foreground probabilities) | tflite.

        Returns:
            the path written.

        Raises:
            DivergenceError: the last fit diverged (nothing of it is exported).
        """
        self._state.check_usable("export")
        return export(self.model, path, format)


def _load_model(init: Init, settings: Settings) -> keras.Model:
    """Build the settings' model and fill it from the init."""
    cfg = settings.model
    if init.kind == "mtl_pre_train":
        model, reset, classes = load_pre_trained(init.weights, cfg)
        if reset:
            logging.info(f"{init.weights} has a {classes}-class head; loaded everything else, "
                         f"{', '.join(reset)} start fresh")
        return model
    model = build_model(cfg)
    if init.kind == "tf1":
        report = restore_tf1_checkpoint(model, init.weights, cfg)
        logging.info(report.summary())
        return model
    if cfg.model_name == "mtl_unet":  # meta-trained (or adapted from such) in this mode
        set_mtl_mode(model, "meta_transfer")
    # The head dropout rate is a model variable, but the adaptation sets it.
    checkpoint.load_checkpoint(init.weights, {"model": list(model.variables)},
                               skip=("final_dropout/rate",))
    return model


def resolve_init(path: str, overrides: Mapping | None = None,
                 labels: Mapping[str, str] | None = None) -> tuple[Init, Settings]:
    """Find the init at `path` and its settings with the overrides (no model is built).

    Args:
        path: any init the tool writes or reads (see segmenter.inits).
        overrides: setting name -> value.
        labels: how to name each setting in messages (e.g. its command-line flag).

    Returns:
        (init, settings).

    Raises:
        UserError: nothing loadable at `path`, an unknown setting, or an override that
            contradicts the init's architecture.
    """
    init = find_init(path)
    return init, settings_lib.resolve(init, overrides or {}, labels)


def build(init: Init, settings: Settings) -> Segmenter:
    """Build the model, load the init into it, compile its inner loop.

    Args:
        init: the found init.
        settings: its resolved settings.

    Returns:
        Segmenter.
    """
    return Segmenter(make_loop(_load_model(init, settings), settings), settings, init)


def from_checkpoint(path: str, *, labels: Mapping[str, str] | None = None,
                    **overrides) -> Segmenter:
    """Load any init the tool writes or reads, ready to `fit` and `predict`.

    Args:
        path: a meta-training run, a fine-tuned checkpoint, a joint-training run, an MTL phase's
            output, or the paper's TF1 checkpoint (folder, prefix or .tar.gz).
        labels: how to name each setting in messages (the command line passes its flags).
        **overrides: settings that win over the checkpoint's (`Settings.lines()` lists them),
            e.g. steps=30, learning_rate=1e-3; architecture settings must equal the init's.

    Returns:
        Segmenter.
    """
    return build(*resolve_init(path, overrides, labels))
