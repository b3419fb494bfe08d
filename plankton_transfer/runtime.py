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
from plankton_transfer.settings import usable_cores


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA where there is none is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but no CUDA GPU is visible; use auto or cpu (PLANKTON_DEVICE, "
                        "or the command's --device)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use auto, cpu or cuda") from None


def use_usable_cores() -> int:
    """torch's CPU threads set to the usable cores (settings.usable_cores: CPU affinity and cgroup
    quota); torch's own default counts the affinity mask but not a quota (a container's
    ``--cpus``, a Slurm job's share), so it can start more threads than the process may run."""
    cores = usable_cores()
    torch.set_num_threads(cores)
    return cores


def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (whose allocator the functions below tune), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl or another C library
        return None
    return libc if hasattr(libc, "malloc_trim") else None


class FreedMemoryReturner:
    """Hands memory that malloc holds free back to the kernel every ``every`` calls.

    Why: the extraction loop allocates and frees buffers of tens of MB per batch (the
    backbone's activations) from more than one thread; glibc keeps freed memory for reuse,
    and depending on how the threads interleave, fragmentation made the stage's peak memory
    wander between identical runs of 20,000 images (1.2 to 3.5 GB). ``malloc_trim(0)``
    releases the pages of every free chunk of every arena, so what is resident stays what is
    in use, whatever the interleaving. Every few batches rather than every batch: a released
    page costs a page fault when it is used again, so a fixed small mmap threshold (the same
    effect every batch) was 15-25 % slower. Measured with ``python -m bench.memory``
    (docs/performance.md). Does nothing outside glibc.
    """

    def __init__(self, every: int) -> None:
        self.libc, self.every, self.calls = glibc(), every, 0

    def __call__(self) -> None:
        self.calls += 1
        if self.libc is not None and self.calls % self.every == 0:
            self.libc.malloc_trim(0)


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
        "usable_cores": usable_cores(),
    }
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        pass
    return info
