"""`--fine-tune-task DIR --checkpoint INIT` needs no other flag, runs through the adaptation API
(the same masks as the API for the same seed), prints the flags that override the init, refuses
one that contradicts its architecture before anything is built or written, and warns about
empty or full support masks."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from run_metasegnet import main
from segmenter import from_checkpoint
from tests.fixtures.folders import file_bytes
from tests.fixtures.tf1_synthetic import write_synthetic_checkpoint
from tests.segmenter.test_segmenter_api import FIXTURE_RUN, examples, run  # noqa: F401


def _folder(root, support_sizes=((50, 40), (37, 61), (64, 48)), query_sizes=((70, 45), (33, 90))):
    images, masks = examples(support_sizes)
    queries, truths = examples(query_sizes, seed=1)
    for part in ("support", "query"):
        (root / part).mkdir(parents=True)
    (root.parent / f"{root.name}_truth").mkdir(exist_ok=True)
    for i, (image, mask) in enumerate(zip(images, masks), 1):
        Image.fromarray(image).save(root / "support" / f"{i}.jpg", quality=95)
        Image.fromarray(mask).save(root / "support" / f"{i}.png")
    for i, (image, mask) in enumerate(zip(queries, truths), 1):
        Image.fromarray(image).save(root / "query" / f"q{i}.jpg", quality=95)
        Image.fromarray(mask).save(root.parent / f"{root.name}_truth" / f"q{i}.png")
    return root


def _written(folder, stems):
    out = []
    for stem in stems:
        with Image.open(folder / "predictions" / f"{stem}_mask.png") as im:
            out.append(np.asarray(im))
    return out


def test_the_checkpoint_alone_is_enough_and_gives_the_apis_masks(run, tmp_path, capsys):
    folder = _folder(tmp_path / "squares")
    assert main(["--fine-tune-task", str(folder), "--checkpoint", run]) == 0
    printed = capsys.readouterr().out
    assert f"Init {run}: FOMAML, 2 meta-iterations" in printed and "overrides" not in printed
    assert sorted(os.listdir(folder)) == ["fine_tuned_checkpoint", "predictions", "query",
                                          "support"]  # the lock is gone with the run
    from storage.atomic import folder_mode
    assert os.stat(folder / "predictions").st_mode & 0o777 == folder_mode()
    with open(folder / "predictions" / "summary.json") as f:
        summary = json.load(f)
    assert summary["steps"] == 3 and summary["schedule"]["learning_rate"] == 0.1
    assert summary["sources"]["steps"].startswith("config.json of ")
    written = _written(folder, ["q1", "q2"])
    assert [m.shape for m in written] == [(45, 70), (90, 33)]
    # The API on the same files (opened with PIL) gives exactly the written masks.
    seg = from_checkpoint(run)
    open_all = lambda part, ext: [Image.open(folder / part / f) for f in  # noqa: E731
                                  sorted(os.listdir(folder / part)) if f.endswith(ext)]
    seg.fit(open_all("support", ".jpg"), open_all("support", ".png"))
    for a, b in zip(seg.predict(open_all("query", ".jpg")), written):
        np.testing.assert_array_equal(a, b)
    reloaded = from_checkpoint(str(folder / "fine_tuned_checkpoint"))
    assert reloaded.init.kind == "fine_tuned" and reloaded.init.state["task"] == "squares"


def test_typed_flags_override_and_a_contradiction_writes_nothing(run, tmp_path, capsys):
    folder = _folder(tmp_path / "squares")
    assert main(["--fine-tune-task", str(folder), "--checkpoint", run, "--eval-iters", "2",
                 "--learning-rate", "0.05", "--image_size", "32"]) == 0
    printed = capsys.readouterr().out
    assert "--eval-iters 2 overrides the init's 3" in printed
    assert "--learning-rate 0.05 overrides the init's 0.1" in printed
    with open(folder / "predictions" / "summary.json") as f:
        summary = json.load(f)
    assert summary["steps"] == 2
    assert summary["sources"]["learning_rate"] == "given (--learning-rate)"

    # A weights folder that cannot be written is refused before the adaptation (/sys refuses
    # new files even to root).
    other = _folder(tmp_path / "other")
    assert main(["--fine-tune-task", str(other), "--checkpoint", run, "--fine-tuned-checkpoint",
                 "/sys/metaseg-weights"]) == 2
    assert "--fine-tuned-checkpoint '/sys/metaseg-weights' cannot be written" in \
        capsys.readouterr().err
    assert sorted(os.listdir(other)) == ["query", "support"]
    assert main(["--fine-tune-task", str(other), "--checkpoint", run, "--image_size", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--image_size 64 contradicts the init" in err[0] \
        and "image_size 32" in err[0]
    assert sorted(os.listdir(other)) == ["query", "support"]
    with pytest.raises(SystemExit) as refused:  # the mode table's refusal, as argparse's
        main(["--fine-tune-task", str(other)])
    assert refused.value.code == 2
    assert "--checkpoint INIT is needed by --fine-tune-task" in capsys.readouterr().err


def test_one_weights_folder_serves_one_task_and_never_lies_in_the_masks(run, tmp_path, capsys):
    """Two task folders given one --fine-tuned-checkpoint: the second is refused before its fit,
    the first one's weights and summary left as they were; weights inside --masks_dir are
    refused before any work too."""
    first, second = _folder(tmp_path / "first"), _folder(tmp_path / "second")
    weights = str(tmp_path / "shared_weights")
    assert main(["--fine-tune-task", str(first), "--checkpoint", run,
                 "--fine-tuned-checkpoint", weights]) == 0
    capsys.readouterr()
    before = file_bytes(tmp_path)
    assert main(["--fine-tune-task", str(second), "--checkpoint", run,
                 "--fine-tuned-checkpoint", weights]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"holds the weights adapted to the task folder {str(first)!r}"         in err[0], err
    masks = tmp_path / "masks"
    assert main(["--fine-tune-task", str(second), "--checkpoint", run, "--masks_dir", str(masks),
                 "--fine-tuned-checkpoint", str(masks / "weights")]) == 2
    assert "is inside the masks folder" in capsys.readouterr().err
    assert file_bytes(tmp_path) == before  # nothing written, nothing changed


def test_empty_and_full_support_masks_warn_on_screen_and_in_the_summary(run, tmp_path, capsys):
    folder = _folder(tmp_path / "squares")
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(folder / "support" / "1.png")
    Image.fromarray(np.full((61, 37), 255, np.uint8)).save(folder / "support" / "2.png")
    assert main(["--fine-tune-task", str(folder), "--checkpoint", run]) == 0
    printed = capsys.readouterr().out
    assert "Warning: example 1's mask is empty" in printed
    assert "Warning: example 2's mask covers the whole image" in printed
    with open(folder / "predictions" / "summary.json") as f:
        assert len(json.load(f)["warnings"]) == 2


def test_a_tf1_checkpoint_needs_no_flag(tmp_path, capsys):
    # The folder here; the .tar.gz goes through the same API (test_segmenter_inits.py).
    checkpoint_dir = str(tmp_path / "EfficientLab-6-3_FOMAML-star_checkpoint")
    write_synthetic_checkpoint(checkpoint_dir, optimizer="adam", step=49999)
    for path in (checkpoint_dir,):
        folder = _folder(tmp_path / f"task-{os.path.basename(path)}", support_sizes=((40, 40),),
                         query_sizes=((30, 50),))
        # Only the step count is lowered, to keep the test short on a CPU; the architecture and
        # the rest of the paper's schedule come from the checkpoint.
        assert main(["--fine-tune-task", str(folder), "--checkpoint", path,
                     "--eval-iters", "1"]) == 0
        printed = capsys.readouterr().out
        assert "a TF1 checkpoint of ml4ai/mliis" in printed
        assert _written(folder, ["q1"])[0].shape == (50, 30)
        with open(folder / "predictions" / "summary.json") as f:
            summary = json.load(f)
        assert summary["model"]["image_size"] == 224 and summary["schedule"]["aug_rate"] == 0.5
