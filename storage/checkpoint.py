"""Atomic, resumable checkpoints of meta-training and every other training loop.

Layout under the run directory (--checkpoint DIR):
    DIR/ckpt-<step>/variables.npz  every variable of each group, in order
    DIR/ckpt-<step>/state.json     step, numpy RNG bit-generator state, variable paths/shapes
    DIR/ckpt-<step>/config.json    the run's resolved config
    DIR/LAST                       name of the newest complete checkpoint

A checkpoint is written into a temporary sibling folder and renamed into place with os.replace;
LAST is rewritten (temp file + os.replace) only after that, and older checkpoints beyond `keep`
are deleted last. A crash at any point leaves LAST naming a complete checkpoint. Temporary
names carry the writer's pid, and a save deletes only those of processes that no longer run
(`storage.atomic.remove_leftovers`); one process writes a run folder (`storage.lock`).

Pruning only ever removes checkpoints of this run: each state.json records a `run_id` and a
`sequence` number, and `keep` counts the newest (by sequence) checkpoints with the same run_id.
A fresh process has a new run_id; loading a checkpoint adopts its run_id for its directory, so a
resumed run goes on pruning its own earlier checkpoints, and nothing else in the folder (another
run's checkpoints, ones written by older versions) is ever deleted.

Groups are named lists of variables, e.g. {"model": model.variables (weights, BN statistics,
dropout seed states), "inner_optimizer": ..., "outer_optimizer": ...}. Loading checks every
group's variable count, order, shapes and dtypes and names every mismatch; nothing is assigned
unless everything matches.

Resume order (`resume`): build the model and optimizers exactly as for a fresh run, then
load the model, inner and outer optimizer variables, then set the RNG state, then continue at
meta-iteration `step` (the number of completed meta-iterations).
"""
from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import uuid
import zipfile
from typing import Callable, Mapping, Sequence

import numpy as np

from errors import DivergenceError, UserError
from storage import atomic

LAST = "LAST"
PREFIX = "ckpt-"
FORMAT_VERSION = 1
_MAX_LISTED = 12
_PROCESS_RUN_ID = uuid.uuid4().hex
_ADOPTED: dict[str, str] = {}  # realpath of a run directory -> run_id of the checkpoint loaded


def _name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def _normalized_path(path: str) -> str:
    # Keras uniquifies auto-named layers per process ("conv2d_3"); compare names without that.
    return "/".join(re.sub(r"_\d+$", "", part) for part in path.split("/"))


def _describe(variables: Sequence) -> list[list]:
    return [[getattr(v, "path", getattr(v, "name", "?")), list(v.shape), str(v.dtype)]
            for v in variables]


def list_checkpoints(directory: str) -> list[tuple[int, str]]:
    """Complete checkpoint folders in `directory`, oldest first.

    Args:
        directory: the run directory.

    Returns:
        list of (step, path).
    """
    if not os.path.isdir(directory):
        return []
    out = []
    for entry in os.listdir(directory):
        match = re.fullmatch(rf"{PREFIX}(\d+)", entry)
        if match and os.path.isfile(os.path.join(directory, entry, "state.json")):
            out.append((int(match.group(1)), os.path.join(directory, entry)))
    return sorted(out)


def latest_checkpoint(directory: str) -> str | None:
    """The checkpoint LAST points to, or None when the directory holds none.

    Args:
        directory: the run directory.

    Returns:
        path of the checkpoint folder, or None.

    Raises:
        FileNotFoundError: LAST names a folder that is not a complete checkpoint; the message
            names the newest complete one (to point LAST at), or says that none is left.
    """
    pointer = os.path.join(directory, LAST)
    if not os.path.isfile(pointer):
        return None
    with open(pointer, encoding="utf-8") as f:
        name = f.read().strip()
    path = os.path.join(directory, name)
    if not os.path.isfile(os.path.join(path, "state.json")):
        complete = list_checkpoints(directory)
        fix = (f"the newest complete one is {os.path.basename(complete[-1][1])}: write its name "
               f"into {pointer} to use it" if complete else
               f"no complete checkpoint is left: delete {pointer} to start over")
        raise FileNotFoundError(f"{pointer} names {name!r}, which is not a complete checkpoint "
                                f"in {directory!r}; {fix}.")
    return path


def _run_id_for(directory: str) -> str:
    return _ADOPTED.get(os.path.realpath(directory), _PROCESS_RUN_ID)


def _own_checkpoints(directory: str, run_id: str) -> list[tuple[int, str]]:
    """(sequence, path) of the complete checkpoints with this run_id, oldest first."""
    out = []
    for _, path in list_checkpoints(directory):
        try:
            with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
                state = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and state.get("run_id") == run_id:
            out.append((int(state.get("sequence", 0)), path))
    return sorted(out)


def save_checkpoint(directory: str, step: int, groups: Mapping[str, Sequence], *,
                    rng_state: dict | None, config_json: str, keep: int | None = 2,
                    extra: dict | None = None) -> str:
    """Write checkpoint `step` atomically, point LAST at it, keep this run's newest `keep`.

    Args:
        directory: the run directory (created if missing).
        step: completed meta-iterations.
        groups: group name -> variables (Keras or tf variables).
        rng_state: `rng.bit_generator.state` of the training generator (JSON-serializable).
        config_json: the run's resolved config (args.Config.to_json()).
        keep: how many of this run's checkpoints to keep (>= 1); None prunes nothing (one-off
            saves such as fine-tuned weights).
        extra: more JSON-serializable fields for state.json.

    Returns:
        path of the new checkpoint folder.
    """
    os.makedirs(directory, exist_ok=True)
    run_id = _run_id_for(directory)
    own = _own_checkpoints(directory, run_id)
    sequence = own[-1][0] + 1 if own else 1
    atomic.remove_leftovers(directory)  # of writers killed mid-write, never a live one's
    tmp = atomic.temp_dir(directory, f".{_name(step)}")
    try:
        arrays = {f"{group}/{i:05d}": np.asarray(v.numpy() if hasattr(v, "numpy") else v)
                  for group, variables in groups.items() for i, v in enumerate(variables)}
        bad = [k for k, a in arrays.items()
               if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all()]
        if bad:  # nothing non-finite is ever saved
            raise DivergenceError(f"Refusing to write checkpoint {step} into {directory!r}: "
                                  f"{len(bad)} arrays hold NaN or inf (first: {bad[0]}).")
        npz = os.path.join(tmp, "variables.npz")
        with atomic.naming(npz), open(npz, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        state = {"format": FORMAT_VERSION, "step": int(step), "rng_state": rng_state,
                 "run_id": run_id, "sequence": sequence,
                 "variables": {g: _describe(v) for g, v in groups.items()}, **(extra or {})}
        atomic.write_text(os.path.join(tmp, "state.json"), json.dumps(state, indent=1))
        atomic.write_text(os.path.join(tmp, "config.json"), config_json)
        final = os.path.join(directory, _name(step))
        if os.path.exists(final):  # the same step written again (e.g. a rerun)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic.write_text(os.path.join(directory, LAST), _name(step) + "\n")
    if keep is not None:
        for _, old in _own_checkpoints(directory, run_id)[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(path: str) -> dict:
    """state.json of a checkpoint folder (or of LAST in a run directory).

    Args:
        path: checkpoint folder or run directory.

    Returns:
        the parsed state dict (step, rng_state, variables, ...).
    """
    path = _resolve(path)
    return _read_json(os.path.join(path, "state.json"))


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except ValueError as e:
        raise UserError(f"{path} is corrupt ({e}); use another checkpoint or delete this "
                        f"one's folder and its LAST pointer.") from e
    if not isinstance(value, dict):
        raise UserError(f"{path} is not a metaseg checkpoint file (not a JSON object).")
    return value


def read_config(path: str) -> dict:
    """config.json of a checkpoint folder (or of LAST in a run directory).

    Args:
        path: checkpoint folder or run directory.

    Returns:
        the parsed config dict.
    """
    path = _resolve(path)
    return _read_json(os.path.join(path, "config.json"))


def _resolve(path: str) -> str:
    if os.path.isfile(os.path.join(path, "state.json")):
        return path
    latest = latest_checkpoint(path) if os.path.isdir(path) else None
    if latest is None:
        raise FileNotFoundError(f"No metaseg checkpoint in {path!r} (expected {LAST} and "
                                f"{PREFIX}<step>/ written by meta-training).")
    return latest


def load_checkpoint(path: str, groups: Mapping[str, Sequence], *,
                    skip: Sequence[str] = ()) -> dict:
    """Assign a checkpoint's arrays to the given variable groups (all checked before any assign).

    Args:
        path: checkpoint folder, or run directory (LAST is followed).
        groups: group name -> variables in the same order as when saved; a group may be a subset
            of the saved groups (e.g. only "model" for --pretrained).
        skip: variable-path prefixes left as they are (e.g. "final_layer_weights" for
            --do_not_restore_final_layer_weights).

    Returns:
        the checkpoint's state dict (step, rng_state, ...).

    Raises:
        FileNotFoundError: no checkpoint.
        ValueError: a group is missing or its variables differ; the message lists each mismatch.
    """
    path = _resolve(path)
    state = read_state(path)
    saved = state.get("variables")
    if not isinstance(saved, dict):
        raise UserError(f"{path}/state.json has no variable list; it is not a complete metaseg "
                        f"checkpoint.")
    problems = []
    for group, variables in groups.items():
        if group not in saved:
            problems.append(f"group {group!r} is not in the checkpoint (it has {sorted(saved)})")
            continue
        mine, theirs = _describe(variables), saved[group]
        if len(mine) != len(theirs):
            problems.append(f"{group}: the checkpoint has {len(theirs)} variables, this model "
                            f"{len(mine)}")
        listed = 0
        for i, (a, b) in enumerate(zip(mine, theirs)):
            if (_normalized_path(a[0]), a[1], a[2]) != (_normalized_path(b[0]), b[1], b[2]):
                if listed < _MAX_LISTED:
                    problems.append(f"{group}[{i}]: model {a[0]} {tuple(a[1])} {a[2]} vs "
                                    f"checkpoint {b[0]} {tuple(b[1])} {b[2]}")
                listed += 1
        if listed > _MAX_LISTED:
            problems.append(f"{group}: ... and {listed - _MAX_LISTED} more mismatches")
    if problems:
        raise ValueError(f"Checkpoint {path} does not match this model:\n  " +
                         "\n  ".join(problems) +
                         "\nUse the model flags it was written with (see its config.json) or a "
                         "fresh --checkpoint directory.")
    npz = os.path.join(path, "variables.npz")
    try:
        with np.load(npz) as arrays:
            values = {group: [arrays[f"{group}/{i:05d}"] for i in range(len(variables))]
                      for group, variables in groups.items()}
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{npz} is truncated or corrupt ({type(e).__name__}: {e}); use an "
                        f"earlier checkpoint or rerun the training that wrote it.") from e
    for group, variables in groups.items():
        for v, value in zip(variables, values[group]):
            if tuple(value.shape) != tuple(v.shape):
                raise UserError(f"{npz}: {group} array of shape {value.shape} where state.json "
                                f"says {tuple(v.shape)}; the checkpoint is corrupt.")
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                raise UserError(f"{npz} holds NaN or inf ({group} {getattr(v, 'path', '?')}): "
                                f"the run diverged before it was saved; use an earlier "
                                f"checkpoint.")
    for group, variables in groups.items():
        for v, value in zip(variables, values[group]):
            if any(getattr(v, "path", "").startswith(p) for p in skip):
                continue
            v.assign(value)
    if state.get("run_id"):  # a run resumed from here goes on pruning its own checkpoints
        _ADOPTED[os.path.realpath(os.path.dirname(path))] = state["run_id"]
    return state


def variable_groups(model, **optimizers) -> dict[str, list]:
    """The groups a run checkpoints: "model" (weights, BN statistics, dropout seeds), then each
    optimizer's variables under its keyword."""
    return {"model": list(model.variables),
            **{name: list(optimizer.variables) for name, optimizer in optimizers.items()}}


def resume(run_dir: str, groups: Mapping[str, Sequence], rng: np.random.Generator | None = None,
           *, check: Callable[[str], None] | None = None) -> dict | None:
    """Load the checkpoint LAST names in `run_dir`, so a rerun goes on where the last one stopped.

    The variables first, then the generator's state: a run resumed this way continues exactly as
    the uninterrupted one would have.

    Args:
        run_dir: the run directory (it may not exist yet).
        groups: the variables, as they were saved.
        rng: the training generator whose state comes back, or None.
        check: called with the checkpoint's path before anything is loaded; it raises to refuse.

    Returns:
        the checkpoint's state (step, rng_state and whatever the run stored) with its "path", or
        None when `run_dir` holds no checkpoint.
    """
    path = latest_checkpoint(run_dir) if os.path.isdir(run_dir) else None
    if path is None:
        return None
    if check is not None:
        check(path)
    state = load_checkpoint(path, groups)
    if rng is not None:
        rng.bit_generator.state = state["rng_state"]
    return {**state, "path": path}


def config_differences(saved: Mapping, current: Mapping, sections: Sequence[str],
                       ignore: Sequence[str] = (), files: Sequence[str] = ()) -> list[str]:
    """Settings of the given config sections whose values differ, nested sections included.

    Args:
        saved: config dict of the checkpoint (config.json).
        current: config dict of this run (json.loads(config.to_json())).
        sections: sections to compare, e.g. ("model", "loss"), or dotted paths to a nested
            section or a single setting ("meta.inner", "meta.seed").
        ignore: dotted paths allowed to differ.
        files: dotted paths holding paths: equal when they name the same file or folder, or
            files with the same bytes, however the paths are written.

    Returns:
        lines "path: checkpoint X, this run Y".
    """
    out = []
    for path in sections:
        a, b = _at(saved, path), _at(current, path)
        if isinstance(a, Mapping) or isinstance(b, Mapping):
            keys = set(a if isinstance(a, Mapping) else {}) | set(b if isinstance(b, Mapping)
                                                                  else {})
            out += config_differences(saved, current, [f"{path}.{k}" for k in sorted(keys)],
                                      ignore, files)
        elif path not in ignore and a != b and not (path in files and same_file(a, b)):
            out.append(f"{path}: checkpoint {a!r}, this run {b!r}")
    return out


def _at(config: Mapping, path: str):
    """The value at a dotted path (None where a key is missing)."""
    value = config
    for key in path.split("."):
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def same_file(a, b) -> bool:
    """Whether two paths name the same file or folder, or two files with the same bytes.

    Args:
        a, b: paths (None or anything else compares unequal).

    Returns:
        True when they are the same.
    """
    if not (isinstance(a, str) and isinstance(b, str) and os.path.exists(a)
            and os.path.exists(b)):
        return False
    if os.path.samefile(a, b):
        return True
    return os.path.isfile(a) and os.path.isfile(b) and filecmp.cmp(a, b, shallow=False)


def check_fine_tuned_dir(directory: str, what: str) -> None:
    """Refuse a weights folder that holds something other than fine-tuned weights.

    Args:
        directory: the folder.
        what: how to name it in the message (e.g. "--fine-tuned-checkpoint").

    Raises:
        UserError: it is a file, or a non-empty folder of another kind (e.g. a meta-training
            run, whose LAST it would redirect).
    """
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise UserError(f"{what} {directory!r} is a file; pass a folder (new, or one holding "
                        f"earlier fine-tuned weights).")
    if os.path.isdir(directory) and os.listdir(directory):
        try:
            kind = read_state(directory).get("kind")
        except (FileNotFoundError, ValueError):
            kind = None
        if kind != "fine_tuned":
            raise UserError(f"{what} {directory!r} is not empty and holds no fine-tuned weights "
                            f"(e.g. a meta-training run, whose checkpoints it would mix with); "
                            f"pass a new folder.")
