"""Extraction across processes with torchrun (2 gloo processes on CPU), launched the way
dvc repro and the Slurm scripts launch it, against the one-process run; and a rank that dies."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plankton_transfer.distributed import Ranks, share
from plankton_transfer.errors import UserError
from plankton_transfer.launch import Launch, requested_launch, worker_command
from plankton_transfer.settings import LAUNCHERS, run_settings
from stages import extract as extract_stage
from tests.conftest import ROOT, documentation, filter_and_split, make_dataset, write_params
from tests.pipeline_repo import command_env

SPLITS = ("train", "val", "test")
TIMINGS = ("seconds", "images_per_s")
FAKE_SRUN = """#!/bin/sh
# srun on a one-node "job": drop srun's options, run the command (what srun runs on each node)
while [ $# -gt 0 ]; do case "$1" in --*) shift;; *) break;; esac; done
exec "$@"
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """19 images in 3 classes, filtered, split, and extracted by one process (batches of 8)."""
    tmp = tmp_path_factory.mktemp("distributed")
    raw = make_dataset(tmp / "raw", {"a": 6, "b": 7, "c": 6})
    params = write_params(tmp / "params.yaml", filter={"min_images_per_class": 3},
                          extract={"batch_size": 8})
    filter_and_split(tmp, raw, params)
    extract_stage.main(stage_args(tmp, "single"))
    return tmp


def stage_args(tmp: Path, out: str) -> list[str]:
    return ["--model", "alexnet", "--raw", str(tmp / "raw"), "--split-dir", str(tmp / "split"),
            "--out-dir", str(tmp / out), "--params", str(tmp / "params.yaml")]


def run_stage(tmp: Path, out: str, env: dict) -> subprocess.CompletedProcess:
    """``python -m stages.extract``, the command in dvc.yaml, in a fresh process."""
    return subprocess.run([sys.executable, "-m", "stages.extract", *stage_args(tmp, out)], cwd=ROOT,
                          env=command_env(env), capture_output=True, text=True, timeout=300)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def without_timings(meta: dict) -> dict:
    meta = {k: v for k, v in meta.items() if k not in TIMINGS}
    # how it ran, not what it computed: threads per process and the number of processes
    meta["environment"] = {k: v for k, v in meta["environment"].items() if k not in ("cpu_threads", "processes")}
    return meta


def test_shares_are_whole_batches_in_rank_order_and_cover_every_row():
    for rows, batch, world in [(19, 8, 2), (100, 7, 3), (5, 8, 4), (64, 8, 8)]:
        shares = [share(rows, batch, Ranks(r, world)) for r in range(world)]
        assert shares[0][0] == 0 and shares[-1][1] == rows
        assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
        assert all(lo % batch == 0 for lo, hi in shares if hi > lo)


def script_exports(name: str) -> dict[str, str]:
    """The PLANKTON_* variables a Slurm script exports (so the tests run what the scripts run)."""
    text = (ROOT / "slurm" / name).read_text()
    return dict(re.findall(r"^export (PLANKTON_[A-Z_]+)=(\S+)", text, flags=re.M))


@pytest.mark.parametrize("name", ["one-node.sbatch", "multi-node.sbatch"])
def test_slurm_scripts_parse_and_use_only_documented_switches(name):
    path = ROOT / "slurm" / name
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    docs = documentation()
    for variable in set(re.findall(r"PLANKTON_[A-Z_]+", text)):
        assert variable in ("PLANKTON_LAUNCHER", "PLANKTON_NPROC") and variable in docs, variable
    exports = script_exports(name)
    assert exports["PLANKTON_LAUNCHER"] in LAUNCHERS and exports["PLANKTON_NPROC"].isdigit()
    assert re.search(r"^\s*dvc repro$", text, flags=re.M) and re.search(r'^\s*dvc exp run "\$@"$', text, flags=re.M)
    assert name in docs


def test_two_torchrun_processes_give_the_one_process_output(data):
    """What slurm/one-node.sbatch runs (its launcher, with 2 CPU processes instead of one per GPU)."""
    env = {**script_exports("one-node.sbatch"), "PLANKTON_NPROC": "2"}
    assert env["PLANKTON_LAUNCHER"] == "torchrun"
    done = run_stage(data, "two", env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch.distributed.run --nproc-per-node=2 --standalone -m stages.extract" in done.stderr
    single, two = (json.loads((data / name / "meta.json").read_text()) for name in ("single", "two"))
    assert two["environment"]["processes"] == 2 and single["environment"]["processes"] == 1
    assert without_timings(two) == without_timings(single)
    for split in SPLITS:
        a, b = np.load(data / "single" / f"{split}.npy"), np.load(data / "two" / f"{split}.npy")
        assert a.shape == b.shape and a.dtype == b.dtype == np.float16
        diff = np.abs(a.astype(np.float32) - b.astype(np.float32)).max()
        print(f"{split}: max abs difference {diff}")  # 0.0 on this CPU: the same batches, the same kernels
        assert diff <= 1e-3 * max(1.0, float(np.abs(a).max()))
        assert np.array_equal(np.load(data / "single" / f"{split}_labels.npy"), np.load(data / "two" / f"{split}_labels.npy"))
    assert sorted(p.name for p in (data / "two").iterdir()) == sorted(p.name for p in (data / "single").iterdir())


def test_a_killed_rank_fails_the_stage_with_its_rank_and_leaves_no_output(data, tmp_path):
    """The multi-node Slurm script's way (srun + torchrun rendezvous from Slurm's variables),
    on one node with a stand-in srun; rank 1 dies by SIGKILL after its first batch."""
    (tmp_path / "srun").write_text(FAKE_SRUN)
    (tmp_path / "srun").chmod(0o755)
    env = {**script_exports("multi-node.sbatch"), "PLANKTON_NPROC": "2", "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "PLANKTON_TEST_KILL_RANK": "1"}
    assert env["PLANKTON_LAUNCHER"] == "slurm"
    done = run_stage(data, "killed", env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "srun --nodes=1" in done.stderr and "--rdzv-backend=c10d" in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: distributed extraction failed, nothing was written: rank 1 ended without a word")
    assert not (data / "killed").exists()
    assert not [p.name for p in data.iterdir() if p.name.startswith(".killed")]  # no temporary left behind


def test_launcher_switch_and_slurm_command():
    assert requested_launch(run_settings({})) == Launch("none", 0)
    assert requested_launch(run_settings({"PLANKTON_LAUNCHER": "torchrun", "PLANKTON_NPROC": "4"})) \
        == Launch("torchrun", 4)
    with pytest.raises(UserError, match="PLANKTON_LAUNCHER is 'mpirun'; choose one of none, torchrun, slurm"):
        run_settings({"PLANKTON_LAUNCHER": "mpirun"})
    with pytest.raises(UserError, match="PLANKTON_NPROC is 'two'; give a whole number >= 0"):
        run_settings({"PLANKTON_NPROC": "two"})
    env = {"SLURM_JOB_ID": "9", "SLURM_JOB_NUM_NODES": "4", "MASTER_ADDR": "gpu017", "MASTER_PORT": "29400"}
    cmd = worker_command(Launch("slurm", 4), "stages.extract", ["--model", "vgg11"], env)
    assert cmd[:5] == ["srun", "--nodes=4", "--ntasks=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert cmd[-4:] == ["-m", "stages.extract", "--model", "vgg11"]
    assert {"--nproc-per-node=4", "--nnodes=4", "--rdzv-backend=c10d", "--rdzv-endpoint=gpu017:29400",
            "--rdzv-id=9"} <= set(cmd)
    with pytest.raises(UserError, match="only inside a Slurm job"):
        worker_command(Launch("slurm", 1), "stages.extract", [], {})


def test_failure_message_names_the_first_rank_that_really_failed(tmp_path):
    from plankton_transfer.distributed import LOST, STOPPED
    from plankton_transfer.launch import rank_cause, read_reports

    def status(rank, error):
        (tmp_path / f"rank-{rank:05d}.json").write_text(json.dumps({"rank": rank, "host": f"gpu{rank}", "error": error}))

    status(0, f"{LOST}: Connection reset by peer")
    status(1, STOPPED)
    status(2, "rank 2: cannot read b/b_000.jpg; the file changed since the filter stage: run dvc repro again")
    assert rank_cause("", read_reports(tmp_path), 4, 1) == ("rank 2 on gpu2: cannot read b/b_000.jpg; the file "
                                                            "changed since the filter stage: run dvc repro again")
    (tmp_path / "rank-00002.json").unlink()
    assert rank_cause("", read_reports(tmp_path), 4, 1).startswith("rank 2 ended without a word")
    assert rank_cause("", read_reports(tmp_path), 2, 1) == "torchrun exited with status 1; its log above says why"
