"""Devices, seeds and library versions: what every torch stage sets up the same way."""
from __future__ import annotations

import ctypes
import os
import platform
import random
import sys

import numpy as np
import torch

from plankton_transfer.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA where there is none is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but no CUDA GPU is visible; set the device param to auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use auto, cpu or cuda") from None


M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def use_one_malloc_arena() -> bool:
    """From now on, every thread of this process allocates from glibc's main malloc arena.

    Why: in the extraction loop, buffers of tens of MB per batch (activations) are allocated
    and freed by more than one thread; glibc then gives threads arenas of their own, whose
    64 MB heaps fragment under such sizes and keep growing: the stage's peak memory wandered
    from 1.2 to 3.5 GB between identical runs of 20,000 images. With one arena the peak is
    flat and repeatable at the speed of the default (measured with ``python -m bench.memory``;
    README, "Performance"). A fixed mmap threshold is flat too but maps and unmaps the
    activations every batch (15-25 % slower). Does nothing outside glibc (musl, macOS) or
    when the user set ``MALLOC_ARENA_MAX`` already. Returns whether it applied.
    """
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return False
    return bool(getattr(libc, "mallopt", None) and libc.mallopt(M_ARENA_MAX, 1))


def seed_everything(seed: int) -> torch.Generator:
    """Seed random, numpy and torch; returns a generator for data order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def use_deterministic_algorithms() -> None:
    """Bitwise-repeatable results on the same machine (cuBLAS needs its workspace setting)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def cgroup_free_bytes() -> int | None:
    """Room left under this process's memory limit (a Slurm job's cgroup), if there is one."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):  # cgroup v1
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # "max" or a huge number: no limit
            return max(0, int(limit) - usage)
    return None


def free_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on ``device``: free GPU memory, or on CPU the
    kernel's MemAvailable, capped by the cgroup limit (Slurm's --mem) where there is one."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    limit = cgroup_free_bytes()
    return available if limit is None else min(available, limit)


def environment(device: torch.device) -> dict:
    """Library versions and hardware, recorded beside the metrics."""
    import torchvision

    info = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion object would not load with weights_only
        "torchvision": str(torchvision.__version__),
        "numpy": np.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        pass
    return info
