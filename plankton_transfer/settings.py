"""How to run, as opposed to what to compute: settings read from the environment.

These never change a result (or change it only as different hardware does), so they are not
params: they would fill ``dvc exp show`` and re-run stages for nothing. Each has a default
that fits the machine; set the variable to override it (docs/running.md):

    PLANKTON_DEVICE    auto | cpu | cuda | cuda:N   where models run (auto: CUDA when present)
    PLANKTON_WORKERS   -1 | N     processes decoding or validating images (-1: from the usable cores)
    PLANKTON_LAUNCHER  none | torchrun | slurm   how the extract stage starts (plankton_transfer/launch.py)
    PLANKTON_NPROC     N          extract processes per node (0: one per GPU, 1 without one)
    PLANKTON_FEATURES  auto | resident | stream  where the train stage keeps features (auto: resident
                       when train and val features take at most half the free memory)

Usable cores are what this process may run on: its CPU affinity (``taskset``, Slurm's
``--cpus-per-task`` binding, a container's cpuset), further capped by a cgroup CPU quota
(a container's ``--cpus``), never simply the machine's core count.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Mapping

from plankton_transfer.errors import UserError

LAUNCHERS = ("none", "torchrun", "slurm")
PLACEMENTS = ("auto", "resident", "stream")


@dataclasses.dataclass(frozen=True)
class RunSettings:
    device: str = "auto"
    workers: int = -1
    launcher: str = "none"
    nproc: int = 0
    features: str = "auto"


def whole_number(env: Mapping[str, str], name: str, default: int, least: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = least - 1
    if value < least:
        raise UserError(f"{name} is {raw!r}; give a whole number >= {least} (or unset it for the default)")
    return value


def choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip() or default
    if value not in choices:
        raise UserError(f"{name} is {value!r}; choose one of {', '.join(choices)} (or unset it for {default})")
    return value


def run_settings(env: Mapping[str, str] = os.environ) -> RunSettings:
    """The run settings from the environment, each checked (one line naming the variable)."""
    device = env.get("PLANKTON_DEVICE", "").strip() or "auto"
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise UserError(f"PLANKTON_DEVICE is {device!r}; use auto, cpu, cuda or cuda:N")
    return RunSettings(device=device, workers=whole_number(env, "PLANKTON_WORKERS", -1, -1),
                       launcher=choice(env, "PLANKTON_LAUNCHER", "none", LAUNCHERS),
                       nproc=whole_number(env, "PLANKTON_NPROC", 0, 0),
                       features=choice(env, "PLANKTON_FEATURES", "auto", PLACEMENTS))


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by this process's cgroup CPU quota (v2 ``cpu.max``, v1 ``cfs_quota_us``), if any."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cores() -> int:
    """Cores this process may use: its affinity, capped by the cgroup quota (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(1, cores)
