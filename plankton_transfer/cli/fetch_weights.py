"""Fetch the ImageNet weights of every configured backbone into the project's weights folder
(``plankton-fetch-weights``, ``make weights``; not a pipeline stage).

The only code that touches the network. For each backbone it makes sure that
``<pretrained.dir>/<backbone>/<official file>`` is there and verified:
- already there: checked against its full sha256 (pinned or recorded);
- shipped by a pip package pinned in requirements.txt: nothing to fetch;
- in the torch hub cache with a pinned full sha256: checked and copied (a damaged or forged
  cache file is named, left alone, and the official file downloaded instead);
- otherwise downloaded from the official HTTPS URL; a hash that is not pinned is recorded
  in ``<pretrained.dir>/<backbone>/SHA256SUMS``, which the extract stage then requires.
Each backbone is reported on its own line; the exit status is 1 when any failed.

``--offline-ok`` (used by ``make demo``) tries the network once: when it is unreachable it
prints a one-line note, skips the remaining downloads and exits 0, so the pipeline runs on
with the weights it has (backbones without them are marked NOT pretrained).

    plankton-fetch-weights                  # models from params.yaml
    plankton-fetch-weights --models vgg11   # just one
"""
from __future__ import annotations

import argparse
import dataclasses
import http.client
import shutil
import socket
import sys
import urllib.error
from pathlib import Path

from plankton_transfer.errors import UserError, run_cli
from plankton_transfer.files import atomic_path
from plankton_transfer.models.backbones import get_backbone
from plankton_transfer.models.weights import (LOCK_FILE, WeightSpec, download, expected_sha256, hub_checkpoint_dir,
                                              model_folder, package_file, record_in_lock, sha256_of, verify)
from plankton_transfer.params.core import check_model_names, params_argument, read_params, section
from plankton_transfer.params.pretrained import PretrainedParams

NETWORK_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError, socket.timeout, http.client.HTTPException)
TIMEOUT_S = 20.0


class NetworkUnreachable(Exception):
    """The download site could not be reached (no network, DNS, firewall, timeout)."""


@dataclasses.dataclass
class Outcome:
    name: str
    ok: bool
    message: str


def copy_verified(source: Path, spec: WeightSpec, folder: Path) -> None:
    """Copy ``source`` into ``folder`` under a temporary name, check it there, then rename."""
    dest = folder / spec.filename
    with atomic_path(dest) as tmp:
        shutil.copyfile(source, tmp)
        verify(tmp, spec, folder)


def download_verified(spec: WeightSpec, folder: Path) -> str:
    """Download into ``folder``; the file only takes its final name once its hash checks out."""
    dest = folder / spec.filename
    with atomic_path(dest) as tmp:
        print(f"downloading {spec.url} -> {dest}", file=sys.stderr)
        try:
            download(spec.url, tmp, TIMEOUT_S)
        except NETWORK_ERRORS as err:
            raise NetworkUnreachable(f"{spec.url}: {getattr(err, 'reason', None) or err}") from None
        digest = sha256_of(tmp)
        if not digest.startswith(spec.name_hash) or (spec.sha256 and digest != spec.sha256):
            raise UserError(f"the file downloaded from {spec.url} has sha256 {digest[:16]}..., not the official "
                            "file's; nothing was kept")
    if not spec.sha256:
        record_in_lock(folder, spec.filename, digest)
    return digest


def fetch(name: str, cfg: PretrainedParams, allow_network: bool) -> str:
    """Make ``name``'s weights available to the extract stage; returns what was done."""
    spec = get_backbone(name).weights
    if spec is None:
        return "no pretrained weights registered"
    folder = model_folder(cfg, name)
    local = folder / spec.filename
    if local.is_file():
        if expected_sha256(spec, folder) is None:
            raise UserError(f"{local} is there but no full sha256 is known for it: move it away and run this again to "
                            f"download and record the official file, or add its sha256 to {folder / LOCK_FILE} "
                            "if you checked it yourself")
        _, check = verify(local, spec, folder)
        return f"{local} (already there, {check})"
    in_package = package_file(spec)
    if in_package is not None and in_package.is_file():
        verify(in_package, spec, folder)
        return f"{in_package} (pip package {spec.pip_name}, pinned in requirements.txt; full sha256 verified)"
    if not spec.url:
        raise UserError(f"{spec.filename} is not installed; install {spec.origin}")
    folder.mkdir(parents=True, exist_ok=True)
    cached = hub_checkpoint_dir() / spec.filename
    note = ""
    if spec.sha256 and cached.is_file():
        if sha256_of(cached) == spec.sha256:
            copy_verified(cached, spec, folder)
            return f"{local} (copied from the torch hub cache, full sha256 verified)"
        note = (f"; the torch hub cache's {cached} is damaged or not the official file (its sha256 differs): it was "
                "not used, delete it")
        print(f"warning: {note[2:]}", file=sys.stderr)
    if not allow_network:
        raise NetworkUnreachable("skipped: the network was unreachable for an earlier backbone")
    try:
        digest = download_verified(spec, folder)
    except (NetworkUnreachable, UserError) as err:
        raise type(err)(f"{err}{note}") from None
    how = "full sha256 verified" if spec.sha256 else f"sha256 {digest[:16]}... recorded in {folder}/SHA256SUMS"
    return f"{local} (downloaded from {spec.url}, {how}){note}"


def fetch_all(names: list[str], cfg: PretrainedParams) -> list[Outcome]:
    """Fetch each backbone's weights, reporting each; after one network failure, stop trying."""
    outcomes, online = [], True
    for name in names:
        try:
            outcomes.append(Outcome(name, True, fetch(name, cfg, online)))
        except NetworkUnreachable as err:
            online = False
            outcomes.append(Outcome(name, False, f"network unreachable ({err})"))
        except UserError as err:
            outcomes.append(Outcome(name, False, str(err)))
    return outcomes


def main(argv: list[str] | None = None) -> list[Outcome]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", help="backbones (default: params.yaml models)")
    p.add_argument("--offline-ok", action="store_true",
                   help="an unreachable network is a note, not an error (make demo)")
    params_argument(p)
    args = p.parse_args(argv)
    params = read_params(args.params)
    cfg = section(PretrainedParams, params, "pretrained")
    outcomes = fetch_all(check_model_names(args.models or params.get("models")), cfg)
    for o in outcomes:
        print(f"{o.name}: {o.message}")
    failed = [o for o in outcomes if not o.ok]
    offline = [o for o in failed if o.message.startswith("network unreachable")]
    if args.offline_ok and failed and len(offline) == len(failed):
        print(f"note: no network for {', '.join(o.name for o in offline)}; the pipeline goes on without their "
              "ImageNet weights (marked NOT pretrained). Run 'make weights' where there is network.")
    elif failed:
        raise UserError(f"weights not available for {', '.join(o.name for o in failed)} (see above)")
    return outcomes


def run() -> None:
    run_cli(main)


if __name__ == "__main__":
    run()
