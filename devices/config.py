"""The frozen config of where and in which precision the meta-learner runs."""
from __future__ import annotations

from dataclasses import dataclass

from meta.config import ensure


@dataclass(frozen=True)
class DeviceConfig:
    """Where and in which precision the meta-learner runs."""

    distribute: str = "none"  # none | mirrored | multi_worker
    num_replicas: int = 1  # local replicas (mirrored: GPUs, or logical CPUs on a CPU machine)
    mixed_precision: str = "none"  # none | bfloat16 | float16 (variables stay float32)
    jit_compile: str = "auto"  # auto (on with a GPU, off on CPU) | on | off
    worker_start_timeout: float = 600.0  # multi_worker: seconds to wait for the other workers

    def __post_init__(self):
        ensure(self.distribute in ("none", "mirrored", "multi_worker"),
               f"--distribute must be none, mirrored or multi_worker. "
               f"Received: {self.distribute!r}")
        ensure(self.num_replicas >= 0 if self.distribute == "mirrored" else self.num_replicas >= 1,
               f"--num_replicas must be >= 1 (0 = every GPU, with --distribute mirrored). "
               f"Received: {self.num_replicas}")
        ensure(self.mixed_precision in ("none", "bfloat16", "float16"),
               f"--mixed_precision must be none, bfloat16 or float16. "
               f"Received: {self.mixed_precision!r}")
        ensure(self.jit_compile in ("auto", "on", "off"),
               f"--jit_compile must be auto, on or off. Received: {self.jit_compile!r}")
        ensure(self.worker_start_timeout > 0,
               f"--worker_start_timeout must be > 0 seconds. "
               f"Received: {self.worker_start_timeout}")
