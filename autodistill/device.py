"""Device choice: CUDA when present, else CPU with threads set from the cores available."""
from __future__ import annotations

import os

import torch


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def select_device(preference: str = "auto") -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("optim.device='cuda' but no CUDA device is available")
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    # Ray and other launchers set OMP_NUM_THREADS to the CPUs they granted us; respect it.
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or available_cpus()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.device("cpu")
