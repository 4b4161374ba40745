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
    """CUDA when asked or present (auto; in a Ray trial, the GPU Ray granted it), else CPU.
    The choice is :func:`autodistill.resources.driver_device`."""
    from .resources import ResourceError, driver_device
    try:
        kind = driver_device(preference, torch.cuda.is_available())
    except ResourceError as err:
        raise RuntimeError(str(err)) from None
    if kind == "cuda":
        return torch.device("cuda")
    # Ray and other launchers set OMP_NUM_THREADS to the CPUs they granted us; respect it.
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or available_cpus()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.device("cpu")
