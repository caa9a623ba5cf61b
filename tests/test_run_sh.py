"""run.sh checks every command line of the demo before it deletes anything: the flags before it
draws the data, then the lines against the drawn data (--image_size against the shards); a
refusal names the demo line that refused it and leaves the previous demo's runs as they were."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def demo_repo(tmp_path):
    """A copy of the repo (links) whose previous demo runs are real folders."""
    for entry in os.listdir(ROOT):
        if entry not in (".git", "demo_data", "demo_shards", "demo_runs", "fewshot_shards"):
            os.symlink(os.path.join(ROOT, entry), tmp_path / entry)
    for run in ("reptile", "fomaml_star", "mtl"):
        (tmp_path / "demo_runs" / run).mkdir(parents=True)
        (tmp_path / "demo_runs" / run / "notes.txt").write_text("kept")
    return tmp_path


@pytest.mark.parametrize("demo, extra, message, line", [
    ("meta", ["--meta-itres", "2"], "unrecognized arguments: --meta-itres 2", None),
    ("meta", ["--shot", "3"], "--shot is not read by meta-learning runs",
     "Reptile line (--checkpoint demo_runs/reptile)"),
    ("meta", ["--foml-tail", "3"], "--foml-tail needs --foml",
     "Reptile line (--checkpoint demo_runs/reptile)"),
    ("mtl", ["--shots", "3"], "--shots is not read by --phase runs", "MTL --phase pre_train line"),
])
def test_a_bad_extra_flag_stops_run_sh_before_it_deletes_the_last_demo(demo_repo, demo, extra,
                                                                        message, line):
    proc = subprocess.run(["./run.sh", *extra], cwd=demo_repo, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "METASEG_DEMO": demo})
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("run_metasegnet.py")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    if line:  # argparse's own usage errors (an unknown flag) end the script itself
        assert f"run.sh: the demo's {line} refused the command line (with the extra " \
               f"arguments: {' '.join(extra)}); nothing was deleted" in proc.stderr
    for run in ("reptile", "fomaml_star", "mtl"):
        assert (demo_repo / "demo_runs" / run / "notes.txt").read_text() == "kept"
    assert not (demo_repo / "demo_data").exists() and not (demo_repo / "demo_shards").exists()


def test_lines_that_do_not_fit_the_drawn_data_stop_run_sh_before_it_deletes(demo_repo):
    """--image_size 128 passes as a flag; the demo's shards are 64 px: refused, naming the line."""
    proc = subprocess.run(["./run.sh", "--image_size", "128"], cwd=demo_repo,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "METASEG_DEMO": "meta"})
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("run_metasegnet.py")]
    assert len(errors) == 1 and "--image_size 128 does not match" in errors[0], proc.stderr
    assert "run.sh: the demo's Reptile line (--checkpoint demo_runs/reptile) refused the " \
           "command line (with the extra arguments: --image_size 128); nothing was deleted" \
           in proc.stderr
    for run in ("reptile", "fomaml_star", "mtl"):
        assert (demo_repo / "demo_runs" / run / "notes.txt").read_text() == "kept"


@pytest.mark.parametrize("demo", ["meta", "mtl"])
def test_run_sh_accepts_its_own_demo_lines(demo_repo, demo):
    """run.sh up to its checks (then stop): every demo command line passes them."""
    with open(os.path.join(ROOT, "run.sh"), encoding="utf-8") as f:
        script = f.read()
    checks_only = script[:script.index('echo "== metaseg demo')] + "exit 0\n"
    os.remove(demo_repo / "run.sh")
    (demo_repo / "run.sh").write_text(checks_only)
    os.chmod(demo_repo / "run.sh", 0o755)
    proc = subprocess.run(["./run.sh"], cwd=demo_repo, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "METASEG_DEMO": demo})
    assert proc.returncode == 0, proc.stderr
