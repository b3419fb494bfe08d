"""Classify new images with a trained model file (not a pipeline stage).

    python -m stages.predict --model-file models/efficientnet_lite0.pt --images new/ --out predictions.csv

The model file names its backbone, weight file (with sha256) and preprocessing; the same
weight file is found again as in the extract stage and must have the recorded sha256.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from stages.backbones import Preprocess, build_feature_extractor, get_backbone
from stages.common import UserError, read_params, run_cli, section, write_csv
from stages.evaluate import predict_proba
from stages.head import load_model_file
from stages.images import BadImage, ImageConfig, is_image_name, load_rgb
from stages.preprocess import Normalize, make_transform
from stages.weights import PretrainedParams, ResolvedWeights, resolve_weights


def backbone_for(record: dict, cfg: PretrainedParams) -> torch.nn.Module:
    """Rebuild the exact backbone the head was trained on."""
    recorded = record["weights"]
    if recorded["pretrained"]:
        weights = resolve_weights(record["backbone"], get_backbone(record["backbone"]).weights,
                                  PretrainedParams(on_missing="error", dir=cfg.dir, download=cfg.download))
        if weights.sha256 != recorded["sha256"]:
            raise UserError(f"{weights.path} is not the weight file this model was trained with "
                            f"(sha256 {recorded['sha256'][:16]}...); put that file in {cfg.dir}/")
    else:
        weights = ResolvedWeights(source="random-init")
    return build_feature_extractor(record["backbone"], weights, seed=recorded["init_seed"])


def classify(record: dict, paths: list[Path], cfg: PretrainedParams, image_cfg: ImageConfig,
             batch_size: int = 32) -> pd.DataFrame:
    model = backbone_for(record, cfg)
    pre_cfg = record["preprocess"]
    pre = Preprocess(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in pre_cfg.items() if k != "mode"})
    transform, normalize = make_transform(pre, pre_cfg["mode"]), Normalize(pre.mean, pre.std)
    rows = []
    for start in range(0, len(paths), batch_size):
        batch, names = [], []
        for path in paths[start:start + batch_size]:
            try:
                batch.append(transform(load_rgb(path, image_cfg)))
                names.append(path)
            except BadImage as err:
                rows.append({"path": str(path), "predicted": "", "probability": None, "error": str(err)})
        if batch:
            with torch.inference_mode():
                proba = predict_proba(record, model(normalize(torch.stack(batch))).numpy())
            for path, p in zip(names, proba):
                rows.append({"path": str(path), "predicted": record["classes"][int(p.argmax())],
                             "probability": round(float(p.max()), 4), "error": ""})
    return pd.DataFrame(rows, columns=["path", "predicted", "probability", "error"])


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-file", type=Path, required=True)
    p.add_argument("--images", type=Path, required=True, help="an image file or a folder (searched recursively)")
    p.add_argument("--out", type=Path, default=Path("predictions.csv"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = p.parse_args(argv)
    params = read_params(args.params)
    record = load_model_file(args.model_file)
    paths = [args.images] if args.images.is_file() else sorted(
        f for f in args.images.rglob("*") if f.is_file() and is_image_name(f.name) and not f.name.startswith("."))
    if not paths:
        raise UserError(f"no image files in {args.images}")
    table = classify(record, paths, section(PretrainedParams, params, "pretrained"),
                     section(ImageConfig, params, "image"))
    write_csv(args.out, table)
    print(f"predict: {len(table)} images -> {args.out}")
    return table


if __name__ == "__main__":
    run_cli(main)
