"""Writing outputs safely: atomic replacement, and never removing what a run did not create.

Every output is written under a temporary name beside its target and renamed into place
only when complete, so a run killed at any moment leaves the old output or the new one.

Rules (docs/data.md):
- a file output never replaces a folder, and a folder output never replaces anything: an
  existing folder is refused with a message (``dvc repro`` removes a stage's outputs
  before running it, so stages run through DVC always start clean);
- the temporaries of a killed run (``.<name>.<host>.<pid>.<random>.partial``) are removed
  by the next write of the same output, but only when they come from this host and their
  process is gone (a zombie counts as gone), so two runs writing the same output at once never touch each other's;
- a full disk (or quota, or a read-only folder) while writing is one line naming the output,
  and the temporary is removed, not a traceback;
- a set of files that belong together (predict's CSV, EcoTaxa table and images) is written as
  one folder and renamed into place at once, so a reader never sees half of one run beside
  half of another. A folder is replaced only when ``replaceable`` says it is this command's
  own earlier output (a marker file it wrote), never a user's folder.

This is the project's one atomic writer: every output goes through :func:`atomic_path`.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from plankton_transfer.errors import UserError

PARTIAL_SUFFIX = ".partial"
DISK_FULL = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "disk quota exceeded",
             errno.EFBIG: "file too large for the file system", errno.EROFS: "read-only file system"}


def temporary_prefix(path: Path) -> str:
    return f".{path.name}.{socket.gethostname()}.{os.getpid()}."


def process_is_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process. A zombie (a killed process its parent has not
    reaped: in a container whose first process reaps nothing, a SIGKILLed run's processes stay
    zombies) is not running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return not is_zombie(pid)


def is_zombie(pid: int) -> bool:
    """Whether ``pid`` is a zombie, from /proc (Linux); False where /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rpartition(")")[2].split()  # the name in brackets may hold spaces and ')'
    return bool(fields) and fields[0] == "Z"


def remove_stale_temporaries(path: Path) -> None:
    """Remove ``.<name>.<this host>.<pid>.*.partial`` left by a killed run whose process is gone."""
    host = socket.gethostname()
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.{glob.escape(host)}.*{PARTIAL_SUFFIX}"):
        pid_part = leftover.name[len(f".{path.name}.{host}."):].split(".", 1)[0]
        if pid_part.isdigit() and not process_is_alive(int(pid_part)):
            shutil.rmtree(leftover, ignore_errors=True)


def refuse_existing(path: Path, directory: bool, replaceable: Callable[[Path], bool] | None = None) -> None:
    if path.is_dir() and not path.is_symlink():
        if not directory:
            raise UserError(f"{path} is a folder; give a file path for this output (nothing was changed)")
        if replaceable is not None and replaceable(path):
            return
        raise UserError(
            f"{path} already exists; a stage never deletes a folder: remove it yourself or run the stage "
            "through dvc repro, which clears a stage's outputs before running it"
        )
    if directory and (path.exists() or path.is_symlink()):
        raise UserError(f"{path} exists and is not a folder; remove it or choose another output folder")


@contextlib.contextmanager
def atomic_path(path: str | Path, directory: bool = False,
                replaceable: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only on success.

    ``directory``: the output is a folder (the caller creates it at the yielded path). An
    existing folder is refused unless ``replaceable(folder)`` says it is this command's own
    earlier output: then the new folder takes its place in one rename and the old one is
    removed afterwards (it was written by this command, never by a user).
    """
    path = Path(path)
    refuse_existing(path, directory, replaceable)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(path), suffix=PARTIAL_SUFFIX, dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        refuse_existing(path, directory, replaceable)  # appeared while we were writing
        if directory and path.is_dir():
            os.replace(path, tmp / ".replaced")  # the earlier output, removed with the temporary
        os.replace(target, path)
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        raise UserError(f"cannot write {path}: {DISK_FULL[err.errno]}; free some space there (or write the "
                        "outputs elsewhere) and run again") from None
    finally:
        remove_own_temporary(tmp)


def remove_own_temporary(tmp: Path) -> None:
    """Remove a temporary this run created, whole: SIGTERM and Ctrl-C wait until it is gone
    (torchrun stops the other ranks with SIGTERM, often while one is already cleaning up;
    a handler raising mid-removal would leave half of it behind)."""
    with signals_deferred():
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGTERM and SIGINT received during the block are acted on (by the handlers in place
    before) when it ends. Python runs signal handlers in the main thread only, so elsewhere
    there is nothing to defer. (Masking the signals would not do: a process-directed signal
    goes to any thread that does not mask it, and torch keeps threads of its own.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum))
                for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if received:
            signal.raise_signal(received[0])


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_csv(path: str | Path, frame: Any) -> None:
    """Write a pandas DataFrame as CSV, atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found; run the stage that writes it first (dvc repro)")
    with path.open(encoding="utf-8") as f:
        return json.load(f)
