"""Re-running a stage under torchrun, on this node or on every node of a Slurm job.

dvc.yaml runs ``python -m stages.extract ...`` whatever the hardware. When the launcher is
``torchrun`` or ``slurm`` (the environment variable ``PLANKTON_LAUNCHER``: how to run is not a
param, it never changes dvc.lock; plankton_transfer/settings.py), that process starts

- ``torchrun``: ``python -m torch.distributed.run --standalone --nproc-per-node N -m stages.extract ...``
  (N = ``PLANKTON_NPROC``, 0: one per GPU of this node, 1 on a node without one);
- ``slurm``: the same through ``srun``, one torchrun per node of the job, meeting at
  ``MASTER_ADDR:MASTER_PORT`` (the job's first node) with the job id as rendezvous id;

waits, and turns a failure into one line (:func:`failure_message`): the rank torchrun saw fail
first (its "Root Cause" block) with that rank's own message, a rendezvous that never met, and
whether the output was written after all. Each rank reports how it ended in a status folder
made here (plankton_transfer/distributed.py writes it); torchrun's stderr is passed through and
its tail kept for the message.
"""
from __future__ import annotations

import codecs
import dataclasses
import json
import os
import re
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


LOG_TAIL_BYTES = 1 << 20  # torchrun's summary and a rendezvous traceback come last
ROOT_CAUSE = "Root Cause (first observed failure):"
FIELD = re.compile(r"^\s*(time|host|rank|exitcode|error_file|traceback)\s*:\s?(.*)$")
RENDEZVOUS_ERROR = r"(Rendezvous(?:Connection|Timeout|State)?Error)"  # not Closed: another agent ended it
RENDEZVOUS_RAISED = re.compile(rf"^(?:[\w.]+\.)?{RENDEZVOUS_ERROR}:[ \t]*(.*)$", re.M)  # the exception's own line
RENDEZVOUS_NAMED = re.compile(rf"\b{RENDEZVOUS_ERROR}\b")
SIGTERM = 15


def root_causes(log: str) -> list[dict[str, str]]:
    """The fields (rank, host, exitcode, traceback...) of every "Root Cause (first observed
    failure)" block in torchrun's error summaries (one per torchrun agent that saw a failure)."""
    blocks = []
    for part in log.split(ROOT_CAUSE)[1:]:
        fields: dict[str, str] = {}
        for line in part.splitlines()[1:]:
            if line.startswith("="):  # the summary's lower border
                break
            match = FIELD.match(line)
            if match and match.group(1) not in fields:
                fields[match.group(1)] = match.group(2).strip()
        if fields.get("rank", "").split(" ")[0].isdigit():
            blocks.append(fields)
    return blocks


def first_failure(log: str) -> dict[str, str] | None:
    """The failure torchrun observed first; a rank ended by SIGTERM was stopped by torchrun
    because another one failed (on another node, its agent reports that one as its root cause)."""
    blocks = root_causes(log)
    real = [b for b in blocks if exit_code(b) not in (-SIGTERM, 128 + SIGTERM)]  # 143: distributed.stop_on_sigterm
    return (real or blocks or [None])[0]


def exit_code(block: dict[str, str]) -> int | None:
    match = re.match(r"-?\d+", block.get("exitcode", ""))
    return int(match.group()) if match else None


def how_it_ended(block: dict[str, str]) -> str:
    """A root-cause block's exit in words."""
    code = exit_code(block)
    if code is not None and code < 0:
        name = re.search(r"\((SIG[A-Z0-9]+)\)", block.get("exitcode", "") + block.get("traceback", ""))
        return (f"killed by signal {-code}{f' ({name.group(1)})' if name else ''}, e.g. by the out-of-memory "
                "killer or a time limit")
    if code is None:
        return "torchrun's log above says how"
    return f"exit status {code}; its traceback is in the log above"


def rendezvous_failure(log: str) -> str | None:
    """A rendezvous error (the ranks never met) named in torchrun's stderr, with its message."""
    match = RENDEZVOUS_RAISED.search(log)
    if match:
        detail = match.group(2).strip()
        return f"{match.group(1)}{f': {detail[:200]}' if detail else ''}"
    named = RENDEZVOUS_NAMED.search(log)
    return named.group(1) if named else None


def output_state(out: Path, before: tuple[int, int] | None = None) -> str:
    """What the run left at ``out``: "complete" (written in this run: rank 0 renames the folder
    into place only after every rank finished, and meta.json is in it), "unchanged" (the same
    folder as before the run, ``before`` being :func:`output_snapshot`'s), "incomplete" (a
    folder without meta.json) or "none"."""
    if not out.is_dir():
        return "none"
    if before is not None and output_snapshot(out) == before:
        return "unchanged"
    return "complete" if (out / "meta.json").is_file() else "incomplete"


def output_snapshot(out: Path) -> tuple[int, int] | None:
    """(inode, mtime) of ``out`` when it exists: tells a folder written by this run from an earlier one."""
    try:
        st = out.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def read_reports(status: Path) -> dict[int, dict]:
    """Each rank's report of how it ended (plankton_transfer/distributed.py: report_status)."""
    reports = {}
    for path in sorted(status.glob("rank-*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            reports[int(record["rank"])] = record
        except (OSError, ValueError, KeyError, TypeError):  # a report cut short by a kill is no report
            continue
    return reports


def rank_cause(log: str, reports: dict[int, dict], world: int, returncode: int) -> str:
    """Why the ranks failed, in words: the rank torchrun saw fail first, with its own message
    where it left one; else a rendezvous that never met; else the first rank that said why."""
    def own(rank: int) -> str | None:
        record = reports.get(rank) or {}
        error = record.get("error")
        if error and error != STOPPED and not error.startswith(LOST):
            return f"rank {rank} on {record.get('host', '?')}: {error.removeprefix(f'rank {rank}: ')}"
        return None

    first = first_failure(log)
    if first is not None:
        rank = int(first["rank"].split(" ")[0])
        if rank not in reports:
            return f"rank {rank} ended without a word ({how_it_ended(first)})"
        said = own(rank) or next(filter(None, map(own, sorted(reports))), None)
        return said or f"rank {rank} failed ({how_it_ended(first)})"
    rendezvous = rendezvous_failure(log)
    if rendezvous and not reports:
        return (f"torchrun's processes never met ({rendezvous}); the rendezvous endpoint was unreachable: on one "
                "machine the loopback interface (127.0.0.1) must be up, under Slurm every node must reach "
                "MASTER_ADDR:MASTER_PORT")
    said = next(filter(None, map(own, sorted(reports))), None)
    if said:
        return said
    silent = [r for r in range(world) if r not in reports]
    if silent:
        return (f"rank {silent[0]} ended without a word (killed by a signal, e.g. the out-of-memory killer or a "
                f"time limit); torchrun's log above says how")
    return f"torchrun exited with status {returncode}; its log above says why"


def failure_message(log: str, out: Path, world: int, returncode: int, reports: dict[int, dict] | None = None,
                    before: tuple[int, int] | None = None) -> str:
    """One line for a failed distributed run, from torchrun's stderr ``log``, the ranks'
    ``reports`` (:func:`read_reports`) and what is at ``out`` (``before``: its
    :func:`output_snapshot` before the run)."""
    cause = rank_cause(log, reports or {}, world, returncode)
    state = output_state(out, before)
    if state == "complete":
        return (f"distributed extraction failed after writing {out} in full (rank 0 moves it into place only once "
                f"every rank has finished its share; meta.json is there), so DVC did not record it: {cause}")
    if state == "unchanged":
        return f"distributed extraction failed, nothing new was written ({out} is still the earlier one): {cause}"
    if state == "incomplete":
        return f"distributed extraction failed; {out} exists but has no meta.json (not this run's output): {cause}"
    return f"distributed extraction failed, nothing was written: {cause}"


def pass_through(stream, keep: int = LOG_TAIL_BYTES) -> str:
    """Copy a child's stderr to ours as it comes (progress bars included) and return its last
    ``keep`` bytes as text."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = bytearray()
    for chunk in iter(lambda: stream.read1(1 << 16), b""):
        sys.stderr.write(decoder.decode(chunk))
        sys.stderr.flush()
        tail += chunk
        del tail[:-keep]
    return tail.decode("utf-8", errors="replace")


def run_workers(launch: Launch, module: str, argv: list[str], out: Path) -> None:
    """Run every rank and wait; raise :class:`UserError` with the failing rank's message.

    The status folder sits beside ``out`` (on the file system every node sees) and is
    removed afterwards; the output itself is written and renamed by rank 0 alone."""
    command = worker_command(launch, module, argv)
    nodes = 1 if launch.kind == "torchrun" else int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ["SLURM_NNODES"])
    world = nodes * processes_per_node(launch)  # nodes alike, as Slurm allocates them
    out.parent.mkdir(parents=True, exist_ok=True)
    before = output_snapshot(out)
    status = Path(tempfile.mkdtemp(prefix=temporary_prefix(out) + "ranks.", suffix=PARTIAL_SUFFIX, dir=out.parent))
    try:
        print(f"launch: {' '.join(command)}", file=sys.stderr, flush=True)
        with subprocess.Popen(command, env={**os.environ, STATUS_ENV: str(status)}, stderr=subprocess.PIPE) as proc:
            try:
                log = pass_through(proc.stderr)
            except BaseException:  # Ctrl-C: as subprocess.run, stop torchrun (it stops its ranks)
                proc.kill()
                raise
            returncode = proc.wait()
        if returncode:
            raise UserError(failure_message(log, out, world, returncode, read_reports(status), before))
    finally:
        remove_own_temporary(status)  # created above, in this run
