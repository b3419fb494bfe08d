"""Re-running a stage under torchrun, on this node or on every node of a Slurm job.

dvc.yaml runs ``python -m stages.extract ...`` whatever the hardware. When the launcher is
``torchrun`` or ``slurm`` (the environment variable ``PLANKTON_LAUNCHER``: how to run is not a
param, it never changes dvc.lock; plankton_transfer/settings.py), that process starts

- ``torchrun``: ``python -m torch.distributed.run --standalone --nproc-per-node N -m stages.extract ...``
  (N = ``PLANKTON_NPROC``, 0: one per GPU of this node, 1 on a node without one);
- ``slurm``: the same through ``srun``, one torchrun per node of the job, meeting at
  ``MASTER_ADDR:MASTER_PORT`` (the job's first node) with the job id as rendezvous id;

waits, and turns a failure into one line naming the rank and its message. Each rank reports
how it ended in a status folder made here (plankton_transfer/distributed.py writes it).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Mapping

import torch

from plankton_transfer.distributed import LOST, STATUS_ENV, STOPPED, under_torchrun
from plankton_transfer.errors import UserError
from plankton_transfer.files import PARTIAL_SUFFIX, remove_own_temporary, temporary_prefix
from plankton_transfer.settings import RunSettings

DEFAULT_PORT = "29500"  # torchrun's own default


@dataclasses.dataclass(frozen=True)
class Launch:
    kind: str = "none"
    nproc: int = 0  # processes per node; 0: one per GPU (1 without GPU)

    @property
    def relaunch(self) -> bool:
        """Start workers: asked for, and this process is not already one of them."""
        return self.kind != "none" and not under_torchrun()


def requested_launch(settings: RunSettings) -> Launch:
    """The launcher and processes per node the run settings (PLANKTON_LAUNCHER, PLANKTON_NPROC) ask for."""
    return Launch(settings.launcher, settings.nproc)


def processes_per_node(launch: Launch) -> int:
    return launch.nproc or torch.cuda.device_count() or 1


def first_node(env: Mapping[str, str]) -> str:
    """The rendezvous host: ``MASTER_ADDR``, else the first host of the job's node list."""
    if env.get("MASTER_ADDR"):
        return env["MASTER_ADDR"]
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodes or not shutil.which("scontrol"):
        raise UserError("launcher slurm needs a Slurm job: set MASTER_ADDR to the first node "
                        "(slurm/multi-node.sbatch does) or run inside sbatch/salloc")
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True)
    return hosts.stdout.split()[0]


def worker_command(launch: Launch, module: str, argv: list[str], env: Mapping[str, str] = os.environ) -> list[str]:
    """The command that starts every rank of ``python -m module argv``."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes_per_node(launch)}"]
    if launch.kind == "torchrun":
        return [*torchrun, "--standalone", "-m", module, *argv]
    nodes = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES")
    if not nodes or not env.get("SLURM_JOB_ID"):
        raise UserError("launcher slurm runs only inside a Slurm job (no SLURM_JOB_ID/SLURM_JOB_NUM_NODES); "
                        "use launcher torchrun on a single machine")
    endpoint = f"{first_node(env)}:{env.get('MASTER_PORT') or DEFAULT_PORT}"
    # one torchrun agent per node; --kill-on-bad-exit ends the step when any agent fails
    srun = ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    return [*srun, *torchrun, f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={env['SLURM_JOB_ID']}", "-m", module, *argv]


def failure_message(status: Path, world: int, returncode: int) -> str:
    """The first real failure among the ranks' reports (a rank stopped because another one
    failed is not one); a rank that wrote nothing was killed or crashed hard."""
    reports = {}
    for path in sorted(status.glob("rank-*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        reports[record["rank"]] = record
    for rank, record in sorted(reports.items()):
        if record["error"] and record["error"] != STOPPED and not record["error"].startswith(LOST):
            return f"rank {rank} on {record['host']}: {record['error'].removeprefix(f'rank {rank}: ')}"
    silent = [r for r in range(world) if r not in reports]
    if silent:
        return (f"rank {silent[0]} ended without a word (killed by a signal, e.g. the out-of-memory killer or a "
                f"time limit); torchrun's log above says how")
    return f"torchrun exited with status {returncode}; its log above says why"


def run_workers(launch: Launch, module: str, argv: list[str], out: Path) -> None:
    """Run every rank and wait; raise :class:`UserError` with the failing rank's message.

    The status folder sits beside ``out`` (on the file system every node sees) and is
    removed afterwards; the output itself is written and renamed by rank 0 alone."""
    command = worker_command(launch, module, argv)
    nodes = 1 if launch.kind == "torchrun" else int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ["SLURM_NNODES"])
    world = nodes * processes_per_node(launch)  # nodes alike, as Slurm allocates them
    out.parent.mkdir(parents=True, exist_ok=True)
    status = Path(tempfile.mkdtemp(prefix=temporary_prefix(out) + "ranks.", suffix=PARTIAL_SUFFIX, dir=out.parent))
    try:
        print(f"launch: {' '.join(command)}", file=sys.stderr, flush=True)
        done = subprocess.run(command, env={**os.environ, STATUS_ENV: str(status)})
        if done.returncode:
            raise UserError(f"distributed extraction failed, nothing was written: "
                            f"{failure_message(status, world, done.returncode)}")
    finally:
        remove_own_temporary(status)  # created above, in this run
