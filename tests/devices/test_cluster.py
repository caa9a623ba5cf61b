"""--distribute multi_worker's start: TF_CONFIG's problems name TF_CONFIG and the key, a worker
whose peer never starts says so and gives up after --worker_start_timeout, and SIGTERM ends the
wait in one line (TensorFlow's own wait would hold the process until kill -9)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from errors import UserError
from devices.cluster import read_tf_config, wait_for_workers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOOD = {"cluster": {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]},
        "task": {"type": "worker", "index": 1}}


def _with(**changes):
    config = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        section, _, field = key.partition("__")
        config[section][field] = value
    return json.dumps(config)


@pytest.mark.parametrize("value, message", [
    (None, "TF_CONFIG, which is not set"),
    ("{'cluster': 1}", "TF_CONFIG is not valid JSON"),
    ("[1]", "TF_CONFIG must be a JSON object"),
    (json.dumps({"task": GOOD["task"]}), "TF_CONFIG key 'cluster' must map job names"),
    (_with(cluster__ps=["h:1"]), "TF_CONFIG key 'cluster.ps'"),
    (_with(cluster__worker=["127.0.0.1", "h:2"]), "TF_CONFIG key 'cluster.worker[0]' must be "
                                                  "'host:port'"),
    (_with(task__type="chief"), "TF_CONFIG key 'task.type' must name a job of 'cluster'"),
    (_with(task__index=2), "TF_CONFIG key 'task.index' must be an integer in [0, 1]"),
    (_with(task__index="0"), "TF_CONFIG key 'task.index'"),
])
def test_every_tf_config_problem_names_tf_config_and_the_key(value, message):
    with pytest.raises(UserError) as info:
        read_tf_config(value)
    assert message in str(info.value) and "\n" not in str(info.value)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_worker_whose_peer_never_starts_names_it_and_gives_up():
    peer = f"127.0.0.1:{_free_port()}"
    cluster = read_tf_config(json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{_free_port()}", peer]},
        "task": {"type": "worker", "index": 0}}))
    lines = []
    started = time.monotonic()
    with pytest.raises(UserError) as info:
        wait_for_workers(cluster, 1.5, log=lines.append)
    assert 1.5 <= time.monotonic() - started < 10
    assert lines and f"Waiting for worker 1 ({peer}) of TF_CONFIG to start" in lines[0]
    assert f"worker 1 ({peer}) of TF_CONFIG did not start within --worker_start_timeout 1.5 s" \
        in str(info.value)


def test_sigterm_ends_a_workers_wait_in_one_line(tmp_path):
    config = {"cluster": {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]},
              "task": {"type": "worker", "index": 0}}
    proc = subprocess.Popen(
        [sys.executable, "run_metasegnet.py", "--data-dir", str(tmp_path / "shards"),
         "--checkpoint", str(tmp_path / "run"), "--distribute", "multi_worker"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CONFIG": json.dumps(config), "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        assert "Waiting for worker 1" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    errors = [line for line in err.splitlines() if line.startswith("run_metasegnet.py")]
    assert proc.returncode == 143 and len(errors) == 1 and "stopped by SIGTERM" in errors[0]
    assert not (tmp_path / "run").exists()
