"""Which init a path holds, and what it says about itself.

Every init the tool writes or reads is recognized from its files alone:

| kind            | what the path is                                                        |
|-----------------|-------------------------------------------------------------------------|
| tf1             | the paper's TF1 checkpoint: folder, prefix or `.tar.gz` (ml4ai/mliis)     |
| mtl_pre_train   | `--phase pre_train`'s folder (its `best.weights.h5`) or that file        |
| mtl_meta_train  | `--phase meta_train`'s folder (or the MTL run folder holding it)         |
| joint_train     | a `--joint_train` run                                                   |
| fine_tuned      | adapted weights: `--fine-tune-task`'s, `Segmenter.save`'s, the page's    |
| meta_train      | a Reptile / FOMAML / FOMAML* run (or one of its `ckpt-<step>` folders)   |

A run folder's init is the checkpoint its LAST names. When LAST is missing, or names a checkpoint
that is not complete, the newest complete `ckpt-<step>/` is used; a run still being trained (its
LOCK held by a running process) is used at its newest complete checkpoint. Each time the init
says so (`Init.note`, in `trained_on` and the log). A folder that holds no init but whose
subfolder does (an unzipped weights.zip holds `weights/`) is refused naming that subfolder.

Reading an init reads small files only (config.json, state.json, the TF1 index); no model is
built, so a refusal costs nothing.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from absl import logging

from errors import UserError
from storage import checkpoint, lock, tf1_checkpoint, tf1_names

BEST_WEIGHTS = "best.weights.h5"  # baselines/pretrain.py writes it; read here as a file name
BEST_INFO = "best.json"
MTL_PHASES = ("meta_train", "pre_train")  # an MTL run folder: the later phase is the init
PAPER_SOURCE = "the paper's run.sh line (ml4ai/mliis run.sh)"
KIND_NAMES = {"tf1": "TF1 checkpoint of the paper's code",
              "mtl_pre_train": "MTL pre-trained U-Net",
              "mtl_meta_train": "MTL meta-trained U-Net",
              "joint_train": "joint-training baseline",
              "fine_tuned": "fine-tuned weights",
              "meta_train": "meta-learned init"}


@dataclass(frozen=True)
class Init:
    """An init as found on disk.

    Attributes:
        kind: one of KIND_NAMES.
        path: the path as given.
        weights: what holds the weights (a checkpoint folder, a .weights.h5, the TF1 path).
        config: its run's resolved config (config.json); {} for a TF1 checkpoint.
        config_path: the file `config` was read from ("" for TF1).
        state: its checkpoint's state.json ({} where there is none).
        best: best.json of an MTL pre-training ({} otherwise).
        tf1_architecture: for TF1, what its variables say (feature extractor, rsd, skip decoding).
        note: what a reader should know about which checkpoint this is ("" when it is simply the
            one LAST names), e.g. that the run is still being trained.
    """

    kind: str
    path: str
    weights: str
    config: dict = field(default_factory=dict)
    config_path: str = ""
    state: dict = field(default_factory=dict)
    best: dict = field(default_factory=dict)
    tf1_architecture: dict = field(default_factory=dict)
    note: str = ""

    def trained_on(self) -> str:
        """One sentence: what this init is and what it was trained on (and its note)."""
        described = self._described()
        return f"{described}; {self.note}" if self.note else described

    def _described(self) -> str:
        if self.kind == "tf1":
            arch = self.tf1_architecture
            skip = ", skip decoding" if arch["skip_decoding"] else ""
            return (f"the paper's EfficientLab ({arch['feature_extractor_name']}, RSD "
                    f"{list(arch['rsd']) or 'none'}{skip}), a TF1 checkpoint of ml4ai/mliis; the "
                    f"paper's released one was meta-trained with FOMAML* on FSS-1000's 760 "
                    f"training classes")
        if self.kind == "fine_tuned":
            source = self.state.get("init") or "an init"
            examples = self.state.get("examples") or len(self.state.get("support", ())) or "?"
            task = self.state.get("task")
            return (f"fine-tuned weights ({examples} examples{f' of {task!r}' if task else ''}), "
                    f"adapted from {source}")
        data = self.config.get("data", {})
        where = describe_data(data.get("data_dir"), data) if data.get("data_dir") else \
            "an unrecorded dataset"
        if self.kind == "mtl_pre_train":
            epoch = self.best.get("epoch")
            dataset = self.config.get("mtl", {}).get("dataset", "Fewshot")
            if dataset != "Fewshot":
                where = f"{dataset} ({self.config.get('mtl', {}).get('dataset_dir')})"
            return (f"an MTL pre-trained U-Net (best val epoch {epoch}) trained on {where}")
        step = self.state.get("step")
        if self.kind == "mtl_meta_train":
            return f"an MTL U-Net meta-trained for {step} tasks on {where}"
        if self.kind == "joint_train":
            return f"a joint-training baseline ({step} epochs) trained on {where}"
        meta = self.config.get("meta", {})
        algorithm = meta.get("algorithm", "reptile")
        name = "Reptile" if algorithm == "reptile" else \
            "FOMAML*" if meta.get("foml_tail") is not None else "FOMAML"
        return f"{name}, {step} meta-iterations on {where}"


def describe_data(data_dir: str, data: dict) -> str:
    """`demo_shards (90 meta-train classes)`: the shards and, if still there, the train classes.

    Args:
        data_dir: the run's --data-dir.
        data: the run's data config section (split flags).

    Returns:
        a short description; the class count is left out when the shards are gone.
    """
    from data.splits import split_classes
    from data.tasks import data_format, recorded_split

    try:
        if data_format(data_dir) == "paper":
            names = [f[:-len(".tfrecord.gzip")] for f in os.listdir(data_dir)
                     if f.endswith(".tfrecord.gzip")]
        else:
            with open(os.path.join(data_dir, "manifest.json"), encoding="utf-8") as f:
                names = sorted(json.load(f)["classes"])
        test_file = data.get("test_tasks_file")
        splits = split_classes(names, test_tasks_file=test_file if test_file and
                               os.path.isfile(test_file) else None,
                               num_test_tasks=int(data.get("num_test_tasks") or 0),
                               num_val_tasks=int(data.get("num_val_tasks") or 0),
                               seed=int(data.get("seed") or 0),
                               recorded=recorded_split(data_dir))
    except (OSError, ValueError, KeyError, TypeError):
        return data_dir
    return f"{data_dir} ({len(splits.train)} meta-train classes)"


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"Cannot read {path} ({e}); the init's folder is incomplete.") from e
    return value if isinstance(value, dict) else {}


def _pre_train_init(path: str, weights: str) -> Init:
    folder = os.path.dirname(os.path.abspath(weights))
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise UserError(f"{weights} has no config.json beside it, so its U-Net's size is unknown; "
                        f"pass the folder --phase pre_train wrote.")
    best = os.path.join(folder, BEST_INFO)
    return Init(kind="mtl_pre_train", path=path, weights=weights, config=_read_json(config_path),
                config_path=config_path, best=_read_json(best) if os.path.isfile(best) else {})


def _run_checkpoint(path: str) -> tuple[str, str]:
    """The checkpoint of a run folder to use as its init, and what to say about it.

    Returns:
        (checkpoint folder, note: "" for the one LAST names in a run that is not training).

    Raises:
        UserError: no complete checkpoint (the message says whether the run is still training).
    """
    pointer = os.path.join(path, checkpoint.LAST)
    complete = checkpoint.list_checkpoints(path)
    training = lock.holder_of(path)
    try:
        folder, note = checkpoint.latest_checkpoint(path), ""
    except FileNotFoundError:
        with open(pointer, encoding="utf-8") as f:
            named = f.read().strip()
        folder, note = None, f"its {checkpoint.LAST} names {named!r}, which is not complete"
    if folder is None and not complete:
        if training:
            raise UserError(f"--checkpoint {path!r} is being trained by {training} and holds no "
                            f"complete checkpoint yet; use it once its first checkpoint is "
                            f"written (every --eval-interval meta-iterations), or pass another "
                            f"init.")
        raise UserError(f"--checkpoint {path!r} holds no complete checkpoint "
                        f"({note or 'no ckpt-<step>/ with its state.json'}): its run stopped "
                        f"before writing one. Rerun its command to train it, or pass another "
                        f"init.")
    if folder is None:
        folder = complete[-1][1]
        if not note:
            note = f"its {checkpoint.LAST} is missing"
    newest = os.path.basename(folder)
    if training:
        note = (f"still being trained by {training}: this is its newest complete checkpoint, "
                f"{newest}" + (f" ({note})" if note else ""))
    elif note:
        note = f"{note}: this is its newest complete checkpoint, {newest}"
    if note:
        logging.warning(f"--checkpoint {path}: {note}")
    return folder, note


def _metaseg_init(path: str) -> Init:
    folder, note = (path, "") if os.path.isfile(os.path.join(path, "state.json")) else \
        _run_checkpoint(path)
    state = checkpoint.read_state(folder)
    config_path = os.path.join(folder, "config.json")
    config = _read_json(config_path)
    if state.get("kind") in ("fine_tuned", "joint_train"):
        kind = state["kind"]
    elif config.get("model", {}).get("model_name") == "mtl_unet":
        kind = "mtl_meta_train"
    else:
        kind = "meta_train"
    return Init(kind=kind, path=path, weights=folder, config=config, config_path=config_path,
                state=state, note=note)


def _tf1_init(path: str) -> Init:
    with tf1_checkpoint.open_tf1_checkpoint(path) as (prefix, reader):
        names = list(reader.get_variable_to_shape_map())
    found = tf1_names.describe_checkpoint(names)
    if len(found["feature_extractors"]) != 1:
        raise UserError(f"TF1 checkpoint {path} holds {found['feature_extractors'] or 'no'} "
                        f"EfficientNet scopes; expected exactly one (efficientnet-b0 or -b3).")
    skip = any(n.startswith(tf1_names.SKIP_DECODER_SCOPE + "/") for n in names)
    return Init(kind="tf1", path=path, weights=path, tf1_architecture={
        "feature_extractor_name": found["feature_extractors"][0], "rsd": tuple(found["rsd"]),
        "skip_decoding": skip})


def find_init(path: str) -> Init:
    """Recognize the init at `path` (see the module docstring).

    Args:
        path: what --checkpoint or `from_checkpoint` was given.

    Returns:
        Init.

    Raises:
        UserError: the path is missing or holds nothing the tool can load; the message lists
            what is accepted.
    """
    if not os.path.exists(path) and not os.path.isfile(path + ".index"):
        raise UserError(f"--checkpoint {path!r} does not exist.")
    if tf1_checkpoint.is_tf1_checkpoint(path):
        return _tf1_init(path)
    if os.path.isfile(path) and path.endswith(".weights.h5"):
        return _pre_train_init(path, path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, BEST_WEIGHTS)):
            return _pre_train_init(path, os.path.join(path, BEST_WEIGHTS))
        if not _is_run(path):
            for phase in MTL_PHASES:  # an MTL run folder: its latest phase's output
                sub = os.path.join(path, phase)
                if _is_run(sub) or os.path.isfile(os.path.join(sub, BEST_WEIGHTS)):
                    return find_init(sub) if phase == "pre_train" else _metaseg_init(sub)
        if _is_run(path):
            return _metaseg_init(path)
    inside = [os.path.join(path, entry) for entry in sorted(os.listdir(path))
              if _is_run(os.path.join(path, entry))] if os.path.isdir(path) else []
    hint = (f" Its subfolder {inside[0]!r} holds one (an unzipped weights.zip holds weights/): "
            f"pass that." if inside else "")
    raise UserError(f"--checkpoint {path!r} holds no init: expected a metaseg run or checkpoint "
                    f"folder (LAST, ckpt-<step>/), fine-tuned weights, an MTL phase folder "
                    f"(pre_train/ with {BEST_WEIGHTS}, meta_train/), or the paper's TF1 "
                    f"checkpoint (folder, prefix or .tar.gz).{hint}")


def _is_run(path: str) -> bool:
    """A metaseg run or checkpoint folder: LAST, a checkpoint's state.json, a ckpt-<step>/ folder
    (LAST lost), or the lock of a run being trained."""
    return os.path.isdir(path) and (
        os.path.isfile(os.path.join(path, checkpoint.LAST))
        or os.path.isfile(os.path.join(path, "state.json"))
        or bool(checkpoint.list_checkpoints(path))
        or (os.path.isfile(os.path.join(path, "config.json")) and lock.holder_of(path) is not None))
