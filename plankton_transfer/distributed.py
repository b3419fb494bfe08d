"""One stage, several processes: what a process started by torchrun needs to take its share.

torchrun (``python -m torch.distributed.run``) starts N copies of a stage and tells each its
place through environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``). Here:

- :func:`current_ranks` reads them (one process, rank 0 of 1, when they are absent, so the
  same code runs unchanged without torchrun);
- :func:`share` gives each rank a contiguous run of rows that starts on a batch boundary, so
  every batch holds the same images as in the one-process run (identical features);
- :func:`process_group` joins the ranks (gloo on CPU, NCCL on CUDA, plus a gloo group for the
  small messages) and reports how this rank ended to the launcher (plankton_transfer/launch.py);
- :func:`shared_output_folder`: rank 0 alone creates the output's temporary folder (the
  atomic-write rules of plankton_transfer/files.py), tells the others its path, and alone
  renames it into place; :func:`agree` makes every rank fail with the first failing rank's
  message, so a failure anywhere leaves no output.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from plankton_transfer.errors import UserError
from plankton_transfer.files import atomic_path
from plankton_transfer.settings import usable_cores

STATUS_ENV = "PLANKTON_RANK_STATUS"  # folder where each rank reports how it ended (set by the launcher)
# A rank waits at most this long for the others at a meeting point; a dead rank is noticed at
# once (its connection closes), so this only bounds a rank that hangs. Shares differ by at
# most one batch, so the wait is short unless a node is much slower.
MEETING_TIMEOUT = datetime.timedelta(hours=2)
STOPPED = "stopped because another rank failed"
LOST = "lost contact with another rank"


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of one run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def leader(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    """Started by torchrun (or any launcher that sets the torch.distributed variables)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def current_ranks() -> Ranks:
    if not under_torchrun():
        return Ranks()
    env = os.environ
    world = int(env["WORLD_SIZE"])
    return Ranks(int(env["RANK"]), world, int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", world)))


def share(rows: int, batch_size: int, ranks: Ranks) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of rank ``ranks.rank``: whole batches, as even as they go, in rank order."""
    batches = -(-rows // batch_size)
    first, last = ranks.rank * batches // ranks.world, (ranks.rank + 1) * batches // ranks.world
    return min(rows, first * batch_size), min(rows, last * batch_size)


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """One GPU per rank on a node (``cuda:LOCAL_RANK``); a CPU rank gets its share of the usable
    cores as torch threads (torch's own default counts the affinity mask but not a cgroup CPU
    quota, and torchrun's is 1)."""
    if device.type == "cuda" and ranks.world > 1:
        if ranks.local_rank >= torch.cuda.device_count():
            raise UserError(f"rank {ranks.rank} is local rank {ranks.local_rank} but this node has "
                            f"{torch.cuda.device_count()} GPU(s); start at most one process per GPU (PLANKTON_NPROC)")
        torch.cuda.set_device(ranks.local_rank)
        return torch.device("cuda", ranks.local_rank)
    if device.type == "cpu":
        torch.set_num_threads(max(1, usable_cores() // ranks.local_world))
    return device


def report_status(ranks: Ranks, error: str | None) -> None:
    """Tell the launcher how this rank ended (nothing when no launcher asked)."""
    folder = os.environ.get(STATUS_ENV)
    if folder:
        record = {"rank": ranks.rank, "host": socket.gethostname(), "error": error}
        (Path(folder) / f"rank-{ranks.rank:05d}.json").write_text(json.dumps(record) + "\n", encoding="utf-8")


def stop_on_sigterm(signum: int, frame: Any) -> None:
    """torchrun stops the other ranks with SIGTERM when one fails: exit through Python, so the
    temporary output of this run is removed on the way out (``finally`` blocks run)."""
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[Any]:
    """Join the other ranks (yields the group for small messages; None for one process) and
    report how this rank ended. A lost rank becomes a one-line error instead of a traceback."""
    if ranks.world == 1:  # one process (perhaps started by a launcher with one process per node)
        try:
            yield None
        except UserError as err:
            report_status(ranks, str(err))
            raise
        report_status(ranks, None)
        return
    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
    error: str | None = "failed with an unexpected error (its traceback is in the log above)"
    try:
        # NCCL stays lazy (no communicator until a GPU collective needs one); the small
        # messages used here (paths, errors) travel over gloo on CPU whatever the device
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=MEETING_TIMEOUT)
        group = dist.new_group(backend="gloo", timeout=MEETING_TIMEOUT) if device.type == "cuda" else dist.group.WORLD
        yield group
        error = None
    except UserError as err:
        error = str(err)
        raise
    except SystemExit:
        error = STOPPED
        raise
    finally:
        report_status(ranks, error)
        if dist.is_initialized():
            dist.destroy_process_group()
        signal.signal(signal.SIGTERM, previous)


def meet(collective, *args, **kwargs) -> None:
    """Run a collective; a rank that died on the way (its connection closed) becomes a
    one-line error instead of a backend traceback."""
    try:
        collective(*args, **kwargs)
    except RuntimeError as err:  # gloo and NCCL report a lost peer as RuntimeError (DistBackendError)
        raise UserError(f"{LOST}: {str(err).splitlines()[0][:160]}") from None


def broadcast(obj: Any, group: Any) -> Any:
    """Rank 0's ``obj``, on every rank."""
    box = [obj]
    meet(dist.broadcast_object_list, box, src=0, group=group)
    return box[0]


def agree(error: str | None, ranks: Ranks, group: Any) -> None:
    """Meet every rank; if any failed, fail here too, with the first failing rank's message."""
    if group is None:
        if error:
            raise UserError(error)
        return
    errors: list[str | None] = [None] * ranks.world
    meet(dist.all_gather_object, errors, error, group=group)
    for rank, message in enumerate(errors):
        if message:
            raise UserError(message if message.startswith("rank ") else f"rank {rank}: {message}")


@contextlib.contextmanager
def shared_output_folder(path: Path, ranks: Ranks, group: Any) -> Iterator[Path]:
    """An empty temporary folder for output ``path``, the same on every rank.

    Rank 0 creates it with :func:`~plankton_transfer.files.atomic_path` and renames it to
    ``path`` when its block ends without error; it is removed on any failure. The other
    ranks only write into it (all ranks must see the same file system, as on a cluster's
    shared scratch)."""
    with contextlib.ExitStack() as stack:
        tmp, error = None, None
        if ranks.leader:
            try:
                tmp = stack.enter_context(atomic_path(path, directory=True))
                tmp.mkdir()
            except UserError as err:
                error = str(err)
        if group is not None:
            tmp, error = broadcast((tmp, error), group)
        if error:
            raise UserError(error)
        assert tmp is not None
        yield Path(tmp)
