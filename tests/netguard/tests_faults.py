"""Fault injection for tests, installed by this folder's sitecustomize in the processes a test
starts (never in the library): the worst moments for a run to die.

- PLANKTON_TEST_KILL_BEFORE=<file name>: SIGKILL the whole process group (dvc included) just
  before an output of that name is renamed into place (tests/test_interrupt.py);
- PLANKTON_TEST_KILL_RANK=<rank>: under torchrun, that rank SIGKILLs itself when it first writes
  features to its shard, as a rank killed by the out-of-memory killer (tests/test_distributed.py).
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import signal
import sys


def kill_before_rename(name: str) -> None:
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(os.fspath(dst)) == name:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        return real(src, dst, *args, **kwargs)

    os.replace = replace


class PatchAfterImport(importlib.abc.MetaPathFinder):
    """Runs ``patch(module)`` once the module ``name`` has been imported."""

    def __init__(self, name: str, patch) -> None:
        self.name, self.patch = name, patch

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module, patch = spec.loader.exec_module, self.patch

        def exec_and_patch(module):
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def kill_rank(rank: str) -> None:
    if os.environ.get("RANK") != rank:
        return

    def patch(features) -> None:
        def write(self, offset, rows):
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        features.ShardWriter.write = write

    sys.meta_path.insert(0, PatchAfterImport("plankton_transfer.data.features", patch))


def install() -> None:
    if os.environ.get("PLANKTON_TEST_KILL_BEFORE"):
        kill_before_rename(os.environ["PLANKTON_TEST_KILL_BEFORE"])
    if os.environ.get("PLANKTON_TEST_KILL_RANK"):
        kill_rank(os.environ["PLANKTON_TEST_KILL_RANK"])
