"""Ship trained models (``plankton-export``, ``make export``; not a pipeline stage).

    plankton-export                         # every model in params.yaml, into export/<model>/
    plankton-export --models efficientnet_lite0 --out-dir shipped

Writes per model, in <out-dir>/<model>/:
  <model>.onnx            backbone + trained head + normalisation: uint8 RGB images -> probabilities
  <model>.torchscript.pt  the same network, traced for PyTorch without this package
  <model>.json            class names, preprocessing (what the caller does, what the graph does),
                          thresholds, temperature, weight source and the check's result
  MODEL_CARD.md           data, classes and counts, metrics, weight source, intended use and limits
Each export is checked on the model's test images (data.raw + data/split/test.csv): onnxruntime
and the traced module against the pipeline's PyTorch path; a difference of 1e-4 or more in any
probability stops it before anything is written.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import onnxruntime
import pandas as pd
import torch

from plankton_transfer.data.images import BadImage, load_rgb
from plankton_transfer.data.preprocess import Preprocess, make_transform
from plankton_transfer.data.splitting import SPLITS, read_splits
from plankton_transfer.errors import UserError, run_cli
from plankton_transfer.evaluation.model_card import model_card
from plankton_transfer.files import read_json, write_json, write_text
from plankton_transfer.models.export import (EXPORTERS, export_description, export_onnx, reference_probabilities,
                                             save_traced, shipped_model, trace_checked)
from plankton_transfer.models.heads import load_model_file
from plankton_transfer.params import (DataParams, ImageParams, PretrainedParams, check_model_names, params_argument,
                                      read_params, section)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", help="backbone names (default: params.yaml models)")
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--split-dir", type=Path, default=Path("data/split"))
    p.add_argument("--metrics-dir", type=Path, default=Path("metrics"), help="the evaluate stage's metrics folder")
    p.add_argument("--filter-report", type=Path, default=Path("data/filtered/report.json"))
    p.add_argument("--out-dir", type=Path, default=Path("export"))
    p.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                   help="torch.onnx exporter: dynamo (torch.export, the supported one) or torchscript (older, faster)")
    p.add_argument("--check-images", type=int, default=256, help="test images the check runs (at most)")
    params_argument(p)
    return p.parse_args(argv)


def check_images(raw: Path, split_dir: Path, record: dict, image_cfg: ImageParams, limit: int) -> torch.Tensor:
    """Up to ``limit`` test images, preprocessed as the model expects (uint8, N x 3 x S x S)."""
    transform = make_transform(Preprocess.from_record(record["preprocess"]), record["preprocess"]["mode"])
    images = []
    for rel in read_splits(split_dir)["test"]["path"][:limit]:
        try:
            images.append(transform(load_rgb(raw / rel, image_cfg)))
        except (BadImage, OSError) as err:
            raise UserError(f"cannot read test image {raw / rel} ({err}); run dvc repro so the split matches "
                            "data.raw") from None
    if not images:
        raise UserError(f"no test images in {split_dir}/test.csv; run dvc repro first")
    return torch.stack(images)


def class_counts(split_dir: Path) -> pd.DataFrame:
    parts = read_splits(split_dir)
    return pd.DataFrame({s: parts[s]["class"].value_counts() for s in SPLITS}).fillna(0).astype(int).sort_index()


def optional_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path, keep_default_na=False) if path.is_file() else None


def optional_json(path: Path, key: str | None = None) -> dict:
    if not path.is_file():
        return {}
    value = read_json(path)
    return value.get(key, {}) if key else value


def export_model(name: str, args: argparse.Namespace, raw: Path, image_cfg: ImageParams,
                 pretrained_cfg: PretrainedParams) -> dict:
    """Export one model into ``<out-dir>/<name>/``; returns the check's numbers."""
    record = load_model_file(args.models_dir / f"{name}.pt")
    folder = args.out_dir / name
    model = shipped_model(record, pretrained_cfg)
    images = check_images(raw, args.split_dir, record, image_cfg, args.check_images)
    reference = reference_probabilities(model, record, images)
    start = time.perf_counter()
    traced, script_diff = trace_checked(model, images, reference)  # both checked before either file is written
    folder.mkdir(parents=True, exist_ok=True)  # only once the inputs are known good
    onnx_diff = export_onnx(model, images, reference, folder / f"{name}.onnx", args.exporter)
    save_traced(traced, folder / f"{name}.torchscript.pt")
    checks = {"test_images": len(images), "tolerance": 1e-4, "onnx_max_abs_diff": onnx_diff,
              "torchscript_max_abs_diff": script_diff, "onnx_exporter": args.exporter,
              "onnxruntime": onnxruntime.__version__, "torch": str(torch.__version__),
              "against": "PyTorch float32 backbone + the model file's head (head_probabilities)"}
    write_json(folder / f"{name}.json", export_description(record, checks))
    files = {f"{name}.onnx": "the network for onnxruntime (input 'image', output 'probabilities')",
             f"{name}.torchscript.pt": "the same network for torch.jit.load",
             f"{name}.json": "classes, preprocessing, thresholds, temperature, weights, check"}
    write_text(folder / "MODEL_CARD.md", model_card(
        record, optional_json(args.metrics_dir / "evaluate" / f"{name}.json", name), class_counts(args.split_dir),
        optional_json(args.filter_report), optional_csv(args.metrics_dir / "thresholds" / f"{name}.csv"), files,
        optional_csv(args.metrics_dir / "per_class" / f"{name}.csv")))
    print(f"export {name}: {folder}/ ({len(images)} test images: max |onnxruntime - PyTorch| {onnx_diff:.1e}, "
          f"TorchScript {script_diff:.1e}; {time.perf_counter() - start:.1f} s)")
    return checks


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    params = read_params(args.params)
    names = check_model_names(args.models or params.get("models"))
    raw = Path(section(DataParams, params, "data").raw)
    image_cfg, pretrained_cfg = section(ImageParams, params, "image"), section(PretrainedParams, params, "pretrained")
    for path in (args.out_dir, *(args.out_dir / name for name in names)):
        if path.exists() and not path.is_dir():
            raise UserError(f"--out-dir: {path} is a file, not a folder; choose another --out-dir (nothing was changed)")
    for name in names:
        if not (args.models_dir / f"{name}.pt").is_file():
            raise UserError(f"{args.models_dir / f'{name}.pt'} not found; run dvc repro to train {name} first")
    return {name: export_model(name, args, raw, image_cfg, pretrained_cfg) for name in names}


def run() -> None:
    run_cli(main)


if __name__ == "__main__":
    run()
