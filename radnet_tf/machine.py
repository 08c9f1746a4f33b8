"""The speed of this machine on a fixed reference, to read wall times against.

A run's wall time means little without the machine it ran on (2-core machines of one kind
differ by up to 3x). `matmul_rate()` times a 1,024 x 1,024 float32 matrix product with
NumPy (best of a few repeats) and `speed_line()` words it for a run's summary.
"""

from __future__ import annotations

import os
import time

import numpy as np

REFERENCE_N = 1024


def matmul_rate(n=REFERENCE_N, repeats=5) -> float:
    """GFLOP/s of the best of `repeats` float32 [n, n] @ [n, n] products (2 n^3 flops)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: BLAS threads start
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def speed_line(rate=None) -> str:
    """One line naming the reference rate and the CPUs this process may use."""
    rate = matmul_rate() if rate is None else rate
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{REFERENCE_N}² float32 matmul {rate:.1f} GFLOP/s (NumPy, best of 5), {cpus} CPUs"
