"""TensorFlow's C++ log lines stay off the entry points' screen unless asked for."""
import os
import re
import subprocess
import sys

from devices import quiet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Lines TensorFlow 2.21 prints on a CPU run, as they appear on the screen.
ABSL = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
ONEDNN = ("I0000 00:00:1796366549.614062    6729 port.cc:153] oneDNN custom operations are on. "
          "You may see slightly different numerical results due to floating-point round-off errors")
INT32 = ("E0000 00:00:1796366703.256054    7324 util.cc:131] oneDNN supports DT_INT32 only on "
         "platforms with AVX-512. Falling back to the default Eigen-based implementation if present.")
WARNING = "W0000 00:00:1796366703.256054    7324 some_file.cc:12] a warning"
CPP_LINE = re.compile(r"^(WARNING: All log messages before absl|[IWE]\d{4} )", re.M)


def test_lines_are_hidden_as_the_level_says():
    lines = [ABSL, ONEDNN, WARNING, INT32, "Traceback (most recent call last):", "plain text"]
    kept = {level: [l for l in lines if not quiet._hidden(l, level)] for level in range(4)}
    assert kept[0] == lines
    assert kept[1] == lines[2:]
    assert kept[2] == lines[3:]
    assert kept[3] == lines[4:]


def test_the_users_level_stands(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    quiet.quiet_tensorflow()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    quiet.quiet_tensorflow(verbose=True)
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    quiet.quiet_tensorflow()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == quiet.QUIET_LEVEL


def _help(*flags):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "run_metasegnet.py", "--help", *flags], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--verbose" in proc.stdout
    return proc.stderr


def test_run_metasegnet_imports_tensorflow_quietly_and_verbose_brings_the_lines_back():
    assert not CPP_LINE.search(_help()), "TensorFlow's C++ lines on the screen"
    assert CPP_LINE.search(_help("--verbose"))  # the start-up lines of this TensorFlow build
