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
