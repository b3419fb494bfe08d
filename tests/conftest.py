"""Shared helpers: datasets made on the fly with Pillow/numpy, and params files."""
from __future__ import annotations

import copy
import io
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "flowcam-sample"
CLASS_COLOURS = [(200, 40, 40), (40, 160, 40), (40, 40, 200), (200, 200, 40), (160, 40, 160), (40, 180, 180)]


def organism(rng: np.random.Generator, label: int, size: tuple[int, int] = (56, 48)) -> Image.Image:
    """A light background with a class-coloured blob: classes a model can tell apart."""
    w, h = size
    a = np.full((h, w, 3), 235, dtype=np.uint8) + rng.integers(0, 15, (h, w, 3), dtype=np.uint8)
    cy, cx = h // 2 + rng.integers(-4, 5), w // 2 + rng.integers(-4, 5)
    yy, xx = np.ogrid[:h, :w]
    radius = 8 + 3 * (label % 3) + rng.integers(0, 3)
    mask = (yy - cy) ** 2 + ((xx - cx) * (1 + label % 2)) ** 2 < radius ** 2
    a[mask] = CLASS_COLOURS[label % len(CLASS_COLOURS)]
    return Image.fromarray(a)


def make_dataset(root: Path, counts: dict[str, int], seed: int = 0, ext: str = ".jpg") -> Path:
    """``root/<class>/<class>_<i>.jpg`` with ``counts[class]`` distinct images each."""
    rng = np.random.default_rng(seed)
    for label, (name, n) in enumerate(counts.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            organism(rng, label).save(folder / f"{name}_{i:03d}{ext}", quality=92)
    return root


def documentation() -> str:
    """The README and every page of docs/, as one text (what a user can read)."""
    return "\n".join(p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def project_params(**sections) -> dict:
    """The project's params.yaml with some sections' keys replaced."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = copy.deepcopy(params)
    for name, values in sections.items():
        if isinstance(values, dict):
            params[name] = {**params.get(name, {}), **values}
        else:
            params[name] = values
    return params


def filter_and_split(folder: Path, raw: Path, params: Path) -> None:
    """Run the filter and split stages in-process: ``folder``/manifest.csv and ``folder``/split/."""
    from stages import filter as filter_stage
    from stages import split as split_stage

    filter_stage.main(["--raw", str(raw), "--manifest", str(folder / "manifest.csv"), "--report",
                       str(folder / "report.json"), "--cache-file",
                       str(folder / "cache.csv"), "--params", str(params)])
    split_stage.main(["--manifest", str(folder / "manifest.csv"), "--out-dir", str(folder / "split"),
                      "--raw", str(raw), "--params", str(params)])


def write_params(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(project_params(**sections), sort_keys=False))
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming a huge size, with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.fixture(autouse=True)
def isolated_torch_home(tmp_path_factory, monkeypatch):
    """No test sees weight files in the user's real torch hub cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


NETGUARD = Path(__file__).resolve().parent / "netguard"


@pytest.fixture(scope="session", autouse=True)
def one_thread_per_worker():
    """Images of the tests' tiny data sets are read in-process (PLANKTON_WORKERS=0: starting
    worker processes costs more than it saves there; tests that need workers set it). Under
    pytest-xdist (make test: one worker per core), each worker and the processes it starts use
    one thread: two workers each running a thread per core would fight over the cores."""
    os.environ.setdefault("PLANKTON_WORKERS", "0")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def bring_loopback_up() -> bool:
    """Set the loopback interface up if it is down; True if it was.

    A network namespace made by ``unshare -n`` (how the suite is run without network) starts
    with ``lo`` down, unlike any real machine or ``docker --network none``; torchrun's
    rendezvous and the socket guard's own check then cannot reach 127.0.0.1. Only that
    throwaway namespace is touched (in any other, ``lo`` is already up)."""
    import fcntl
    import socket

    siocgifflags, siocsifflags, iff_up, ifreq = 0x8913, 0x8914, 0x1, "16sH14x"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack(ifreq, fcntl.ioctl(s, siocgifflags, struct.pack(ifreq, b"lo", 0)))[1]
        if flags & iff_up:
            return False
        fcntl.ioctl(s, siocsifflags, struct.pack(ifreq, b"lo", flags | iff_up))
        return True


def pytest_configure(config):
    try:
        bring_loopback_up()
    except OSError as err:  # no such interface, or not allowed: the torchrun tests will say what failed
        print(f"note: could not set the loopback interface up ({err}); torchrun needs 127.0.0.1: run "
              "'ip link set lo up' in this network namespace", file=sys.stderr)


@pytest.fixture(scope="session")
def netguard_log(tmp_path_factory) -> Path:
    """Install the socket guard here and in every Python subprocess (dvc, stages, tools)."""
    log = tmp_path_factory.mktemp("netguard") / "attempts.log"
    log.touch()
    os.environ["PLANKTON_NETGUARD_LOG"] = str(log)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NETGUARD), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(NETGUARD))
    from tests_netguard import install

    install(str(log))
    return log


@pytest.fixture(autouse=True)
def no_network(netguard_log):
    """Fail any test during which some process tried to reach beyond loopback."""
    before = netguard_log.stat().st_size
    yield
    with netguard_log.open(encoding="utf-8") as log:
        log.seek(before)
        attempts = log.read()
    assert not attempts, f"a test tried to use the network:\n{attempts[:3000]}"


def make_messy_dataset(root: Path, per_class: int = 10, seed: int = 1) -> dict:
    """Valid images mixed with every trap of real image folders; returns what to expect.

    Classes: 'Copepoda' (holds the traps), 'Diatom chain' (a space), 'Noctilucá' (non-ASCII),
    'Tiny' (too few images), 'empty' (no files).
    """
    rng = np.random.default_rng(seed)
    classes = ["Copepoda", "Diatom chain", "Noctilucá"]
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            organism(rng, label).save(root / name / f"img_{i:03d}.jpg", quality=92)
    (root / "Tiny").mkdir()
    for i in range(2):
        organism(rng, 3).save(root / "Tiny" / f"t_{i}.jpg")
    (root / "empty").mkdir()
    cop = root / "Copepoda"
    # usable but converted
    deep = (np.linspace(0, 4095, 48 * 40).reshape(40, 48)).astype(np.uint16)
    Image.fromarray(deep).save(cop / "deep16.png")
    rgba = np.asarray(organism(rng, 0).convert("RGBA")).copy()
    rgba[:10, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(cop / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    organism(rng, 0).save(cop / "rotated.jpg", exif=exif.tobytes())
    frames = [organism(rng, 0).convert("P") for _ in range(3)]
    frames[0].save(cop / "anim.gif", save_all=True, append_images=frames[1:])
    organism(rng, 0).convert("CMYK").save(cop / "cmyk.tif")
    palette = organism(rng, 0).convert("P")
    palette.save(cop / "palette.png", transparency=0)
    # an enormous scan (but under image.max_pixels): decoded at reduced size by the extract stage
    organism(rng, 0, size=(2400, 1800)).save(cop / "big_scan.jpg", quality=80)
    # rejected
    buf = io.BytesIO()
    organism(rng, 0).save(buf, "JPEG")
    (cop / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (cop / "zero.jpg").write_bytes(b"")
    (cop / "notes.png").write_text("a CSV saved as .png\n")
    (cop / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    # ignored: not images, hidden, AppleDouble, notebook checkpoints
    (cop / "Thumbs.db").write_bytes(b"\0" * 32)
    (cop / "measurements.csv").write_text("id,length\n1,2\n")
    (cop / ".DS_Store").write_bytes(b"\0" * 8)
    (cop / "._img_000.jpg").write_bytes(b"\0\x05\x16\x07" + b"\0" * 60)
    (cop / ".ipynb_checkpoints").mkdir()
    organism(rng, 0).save(cop / ".ipynb_checkpoints" / "img-checkpoint.jpg")
    (root / "README.txt").write_text("collected 2019-2024\n")
    (root / ".DS_Store").write_bytes(b"\0" * 8)
    # nested folder: its images belong to the class
    (cop / "station_4" / "net_2").mkdir(parents=True)
    for i in range(2):
        organism(rng, 0).save(cop / "station_4" / "net_2" / f"n_{i}.jpg")
    # duplicates: a copy inside the class, and one image filed in two classes
    shutil.copy(cop / "img_000.jpg", cop / "copy_of_img_000.jpg")
    shutil.copy(root / "Diatom chain" / "img_005.jpg", cop / "misfiled.jpg")
    # a link loop: followed once, then recognised
    os.symlink("..", cop / "station_4" / "back_to_class")
    return {
        "files_on_disk": sum(len(files) for _, _, files in os.walk(root)),
        "kept_classes": {"Copepoda": per_class + 7 + 2, "Diatom chain": per_class - 1, "Noctilucá": per_class},
        "converted": {"Copepoda/deep16.png", "Copepoda/alpha.png", "Copepoda/rotated.jpg", "Copepoda/anim.gif",
                      "Copepoda/cmyk.tif", "Copepoda/palette.png"},
        "rejected": {"Copepoda/truncated.jpg": "truncated or corrupt", "Copepoda/zero.jpg": "empty file",
                     "Copepoda/notes.png": "not an image", "Copepoda/bomb.png": "too large"},
        "duplicates": {"Copepoda/img_000.jpg": "Copepoda/copy_of_img_000.jpg"},  # first path kept
        "conflict": {"Copepoda/misfiled.jpg", "Diatom chain/img_005.jpg"},
        "ignored": 7,  # Thumbs.db, a CSV, two .DS_Store, an AppleDouble file, a checkpoint, README.txt
        "dropped_classes": {"Tiny", "empty"},
    }
