"""Compute resources as pure functions: what a trial asks Ray for, where the driver fine-tunes the
teacher, and which mixed-precision dtype a device supports.

Nothing here touches a GPU or a cluster: callers pass what they know (``ray.cluster_resources()``,
``torch.cuda.get_device_capability()``), so the logic is tested with plain dicts on a CPU-only machine.
"""
from __future__ import annotations

import math
import os
import resource
import signal
import sys
import threading
import time
from typing import Mapping

RESERVED = ("CPU", "GPU", "memory", "object_store_memory")


GIB = 1024 ** 3


class ResourceError(ValueError):
    """Resources that cannot be granted; the message names the setting to change."""


class MemoryLimitExceeded(RuntimeError):
    """A process went over the memory it was given (``memory_gb_per_trial``)."""


def peak_rss_bytes() -> int:
    """The most resident memory this process has held since it started or since :func:`reset_peak_rss` (the
    kernel's high-water mark, so a peak inside a step counts too). Linux: ``VmHWM``, this process's own;
    elsewhere ``ru_maxrss``, which on Linux would also carry the peak of the process that started this one."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:   # Name: may be any bytes
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024   # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)   # bytes on macOS, KiB elsewhere


def reset_peak_rss() -> bool:
    """Start the high-water mark again from what this process holds now (Linux: ``/proc/self/clear_refs``),
    so that a process that runs one job after another (a reused Ray actor) is judged on each job's own
    peak. False where the kernel offers no reset."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def memory_over(limit_gb: float, setting: str, advice: str) -> str | None:
    """What to say when this process has held more than ``limit_gb`` GiB; None while it has not."""
    peak = peak_rss_bytes()
    if peak <= limit_gb * GIB:
        return None
    return f"this process held {peak / GIB:.2f} GiB, over {setting}={limit_gb:g} GiB: raise {setting}, or {advice}"


def resolve_gpus_per_trial(requested: float | None, cluster: Mapping[str, float]) -> float:
    """GPUs one trial asks for. ``None`` (auto): one GPU when the cluster has any, none on a CPU-only
    cluster. A number is taken as asked: a fraction (< 1) shares a GPU between trials, above 1 it must
    be whole (Ray grants whole GPUs past one). Asking for GPUs the cluster lacks is an error."""
    total = float(cluster.get("GPU", 0) or 0)
    if requested is None:
        return 1.0 if total >= 1 else 0.0
    gpus = float(requested)
    if gpus < 0:
        raise ResourceError(f"gpus_per_trial={requested}: must be >= 0")
    if gpus > 1 and not gpus.is_integer():
        raise ResourceError(f"gpus_per_trial={requested}: above 1 a trial takes whole GPUs (e.g. 2), "
                            "below 1 a fraction shares one (e.g. 0.5)")
    if gpus > 0 and total < min(gpus, 1.0) - 1e-9 or gpus > 1 and total < gpus:
        raise ResourceError(f"gpus_per_trial={requested}, but the Ray cluster has {total:g} GPU(s): "
                            "set gpus_per_trial to 0 (or leave it unset) on a CPU-only cluster")
    return gpus


def trial_resources(cpus_per_trial: float, gpus_per_trial: float | None, extra: Mapping[str, float] | None,
                    cluster: Mapping[str, float], memory_gb: float | None = None) -> dict[str, float]:
    """The resource request of one trial, e.g. ``{"cpu": 1, "gpu": 0.5, "worker_only": 1}``
    (the keys ``tune.with_resources`` takes), checked against the cluster's totals. ``memory_gb`` asks
    for Ray's ``memory`` resource (in bytes), so a node runs only as many trials as its memory holds."""
    if cpus_per_trial <= 0:
        raise ResourceError(f"cpus_per_trial={cpus_per_trial}: must be > 0")
    if cpus_per_trial > float(cluster.get("CPU", 0) or 0):
        raise ResourceError(f"cpus_per_trial={cpus_per_trial:g}, but the Ray cluster has "
                            f"{float(cluster.get('CPU', 0) or 0):g} CPU(s) in all: lower cpus_per_trial")
    out: dict[str, float] = {"cpu": float(cpus_per_trial), "gpu": resolve_gpus_per_trial(gpus_per_trial, cluster)}
    for name, amount in (extra or {}).items():
        if name in RESERVED or name.lower() in ("cpu", "gpu"):
            raise ResourceError(f"resources.{name}: use cpus_per_trial / gpus_per_trial for CPUs and GPUs")
        if amount <= 0:
            raise ResourceError(f"resources.{name}={amount}: must be > 0")
        if float(cluster.get(name, 0) or 0) < amount:
            raise ResourceError(f"resources.{name}={amount:g}: no node of the Ray cluster offers it "
                                f"(cluster has {float(cluster.get(name, 0) or 0):g}); start a node with "
                                f"`ray start --resources='{{\"{name}\": {amount:g}}}'` or drop the setting")
        out[name] = float(amount)
    if memory_gb is not None:
        out["memory"] = _memory_request(memory_gb, cluster)
    return out


def _memory_request(memory_gb: float, cluster: Mapping[str, float]) -> float:
    if memory_gb <= 0:
        raise ResourceError(f"memory_gb_per_trial={memory_gb}: must be > 0")
    total = float(cluster.get("memory", 0) or 0)
    if memory_gb * GIB > total:
        raise ResourceError(f"memory_gb_per_trial={memory_gb:g}, but the Ray cluster offers {total / GIB:.1f} GiB "
                            "of memory to tasks in all: lower memory_gb_per_trial")
    return float(math.floor(memory_gb * GIB))


def concurrent_trials(request: Mapping[str, float], cluster: Mapping[str, float]) -> int:
    """How many trials of ``request`` the cluster's totals hold at once (an upper bound: a trial
    cannot span nodes, which only the scheduler knows)."""
    names = {"cpu": "CPU", "gpu": "GPU"}
    fits = []
    for key, amount in request.items():
        if amount > 0:
            fits.append(math.floor(float(cluster.get(names.get(key, key), 0) or 0) / amount + 1e-9))
    return max(0, min(fits)) if fits else 0


def driver_device(preference: str, cuda_available: bool) -> str:
    """Where the driver fine-tunes the teacher: ``cuda`` when asked or when present (auto), else ``cpu``."""
    if preference == "cuda" and not cuda_available:
        raise ResourceError("optim.device='cuda' but this process sees no CUDA device (on a Ray cluster, give the "
                            "search's driver a GPU: entrypoint_num_gpus / search_entrypoint_gpus)")
    if preference not in ("auto", "cpu", "cuda"):
        raise ResourceError(f"optim.device={preference!r}: one of auto, cpu, cuda")
    return "cuda" if preference in ("auto", "cuda") and cuda_available else "cpu"


def amp_dtype(setting: str, device_type: str, capability: tuple[int, int] | None = None,
              bf16_supported: bool = False) -> str | None:
    """The autocast dtype for training (``"bfloat16"``, ``"float16"``) or None for full precision.

    ``auto``: bfloat16 on a CUDA device that supports it (compute capability 8.0+, Ampere and later),
    float16 on older CUDA devices with tensor cores (7.0+, with a gradient scaler), full precision on
    CPU and on older GPUs. ``bf16``/``fp16`` force one, an error where the device cannot; ``off`` never."""
    if setting == "off":
        return None
    if setting not in ("auto", "bf16", "fp16"):
        raise ResourceError(f"optim.mixed_precision={setting!r}: one of auto, off, bf16, fp16")
    if device_type != "cuda":
        if setting == "auto":
            return None
        raise ResourceError(f"optim.mixed_precision={setting!r} needs a CUDA device (this one is {device_type}); "
                            "use 'auto' or 'off'")
    major = capability[0] if capability else 0
    if setting == "bf16":
        if not bf16_supported:
            raise ResourceError(f"optim.mixed_precision='bf16': this GPU (compute capability "
                                f"{capability}) has no bfloat16; use 'fp16' or 'auto'")
        return "bfloat16"
    if setting == "fp16":
        return "float16"
    if bf16_supported and major >= 8:
        return "bfloat16"
    return "float16" if major >= 7 else None


def watch_memory(limit_gb: float, setting: str, every_s: float = 0.5) -> threading.Thread:
    """End this process, saying why on stderr, as soon as it has held more than ``limit_gb`` of resident
    memory: a daemon thread checks the high-water mark every ``every_s`` seconds, wherever the process is
    (loading data, fine-tuning a teacher, in a library), and kills it (SIGKILL: no handler can keep it
    alive). For a process with no step loop to check in."""
    def watch() -> None:
        while True:
            said = memory_over(limit_gb, setting, "lower the teacher's batch size, data.max_length or the data's rows")
            if said:
                print(f"error: {said}", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(every_s)

    thread = threading.Thread(target=watch, name="memory-watchdog", daemon=True)
    thread.start()
    return thread
