"""Shared test setup: the repo root is importable, TF logs are quiet, CPU only."""
import os
import sys

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MPLBACKEND", "Agg")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from devices.quiet import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def mtl_shards(tmp_path_factory):
    """Tiny demo shards (6 classes, 32 px) for the MTL phases."""
    from tests.fixtures.mtl_run import make_shards
    return make_shards(tmp_path_factory.mktemp("mtl_data"))


@pytest.fixture(scope="session")
def mtl_three_phases(mtl_shards, tmp_path_factory):
    """(run folder, phase -> exit status) of the three MTL phases; read-only for the tests."""
    from tests.fixtures.mtl_run import run_three_phases
    run_dir = tmp_path_factory.mktemp("mtl_run")
    return run_dir, run_three_phases(mtl_shards, run_dir)
