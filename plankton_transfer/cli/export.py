"""Ship trained models (``plankton-export``, ``make export``; not a pipeline stage).

    plankton-export                         # every model in params.yaml (and each fine-tuned one), into export/<model>/
    plankton-export --models efficientnet_lite0 --out-dir shipped

Writes per model one folder, <out-dir>/<model>/, replaced as a whole (an earlier export of the
model is replaced at once, so the files always belong together):
  <model>.onnx            feature network + trained head: uint8 RGB images -> probabilities
  <model>.torchscript.pt  the same network, traced for PyTorch without this package
  <model>.json            classes, every preprocessing step (for consumers without torch),
                          thresholds, temperature, weight source, data, the check's result
  MODEL_CARD.md           data, classes and counts, metrics with intervals, weight source,
                          thresholds, intended use and limits
Each export is checked on test images (data.raw + data/split/test.csv): onnxruntime and the
traced module against the pipeline's path; a difference of 1e-4 or more in any probability
stops it before anything is written. The card takes everything about the model from the model
file, and its metrics from metrics/evaluate/<model>/ only when they belong to this model file.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import onnxruntime
import pandas as pd
import torch

from plankton_transfer.cli.common import refuse_pipeline_folder
from plankton_transfer.data.images import BadImage, load_rgb
from plankton_transfer.data.preprocess import make_transform
from plankton_transfer.data.split_files import read_splits, split_fingerprint
from plankton_transfer.errors import UserError, run_cli
from plankton_transfer.evaluation.model_card import model_card
from plankton_transfer.evaluation.summary import EvaluationSummary, file_sha256
from plankton_transfer.files import atomic_path, write_json, write_text
from plankton_transfer.models.export import (EXPORTERS, export_description, export_onnx,
                                             reference_probabilities, save_traced, shipped_model, trace_checked)
from plankton_transfer.models.model_file import ModelFile
from plankton_transfer.params.core import check_model_names, params_argument, read_params, section
from plankton_transfer.params.data import DataParams
from plankton_transfer.params.finetune import finetuned_models
from plankton_transfer.params.pretrained import PretrainedParams


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is under 1")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", help="model names (default: params.yaml models, then <backbone>-ft for "
                                               "each of finetune.models)")
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--split-dir", type=Path, default=Path("data/split"))
    p.add_argument("--evaluations", type=Path, default=Path("metrics/evaluate"),
                   help="the evaluate stage's folders (<model>/summary.json)")
    p.add_argument("--out-dir", type=Path, default=Path("export"))
    p.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                   help="torch.onnx exporter: dynamo (torch.export, the supported one) or torchscript (older, faster)")
    p.add_argument("--check-images", type=positive, default=256, help="test images the check runs (at most)")
    params_argument(p)
    return p.parse_args(argv)


def check_images(raw: Path, split_dir: Path, model: ModelFile, limit: int) -> tuple[torch.Tensor, str]:
    """Up to ``limit`` test images, preprocessed as the model expects (uint8, N x 3 x S x S), and
    where they come from."""
    recipe = model.input
    transform = make_transform(recipe.preprocess, recipe.mode, recipe.image)
    parts = read_splits(split_dir)
    images = []
    for rel in parts["test"]["path"][:limit]:
        try:
            images.append(transform(load_rgb(raw / rel, recipe.image)))
        except (BadImage, OSError) as err:
            raise UserError(f"cannot read test image {raw / rel} ({err}); run dvc repro so the split matches "
                            "data.raw") from None
    if not images:
        raise UserError(f"{split_dir}/test.csv lists no test image; run dvc repro first")
    own = split_fingerprint(parts) == model.data.split_sha256
    return torch.stack(images), "the model's own test split" if own else f"the test split in {split_dir} (not the " \
                                                                           "split the model was trained on)"


def own_evaluation(name: str, folder: Path, fingerprint: str) -> tuple[EvaluationSummary | None, str,
                                                                      pd.DataFrame | None]:
    """This model's evaluation summary and per-class table (same fingerprint), or None and why not."""
    path = folder / name / "summary.json"
    if not path.is_file():
        return None, f"No evaluation found ({path}): run dvc repro.", None
    try:
        summary = EvaluationSummary.load_json(path)
    except UserError as err:
        return None, f"The evaluation could not be read ({err}).", None
    if summary.model_fingerprint != fingerprint:
        return None, (f"The evaluation in {path} belongs to another model (fingerprint {summary.model_fingerprint[:12]}, "
                      f"this one {fingerprint[:12]}): run dvc repro, then export again."), None
    per_class = folder / name / "per_class.csv"
    return summary, "", pd.read_csv(per_class, keep_default_na=False) if per_class.is_file() else None


def is_own_export(folder: Path) -> bool:
    """A folder an earlier export of the same model wrote (its JSON says so)."""
    try:
        data = json.loads((folder / f"{folder.name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and str(data.get("format", "")).startswith("plankton-transfer-export/")


def export_model(name: str, args: argparse.Namespace, raw: Path, pretrained_cfg: PretrainedParams) -> dict:
    """Export one model into ``<out-dir>/<name>/``; returns the check's numbers."""
    path = args.models_dir / f"{name}.pt"
    model = ModelFile.load(path)
    shipped = shipped_model(model, pretrained_cfg)
    images, origin = check_images(raw, args.split_dir, model, args.check_images)
    reference = reference_probabilities(shipped, model, images)
    start = time.perf_counter()
    traced, script_diff = trace_checked(shipped, images, reference)
    summary, note, per_class = own_evaluation(name, args.evaluations, model.fingerprint())
    files = {f"{name}.onnx": "the network for onnxruntime (input 'image', output 'probabilities')",
             f"{name}.torchscript.pt": "the same network for torch.jit.load",
             f"{name}.json": "classes, preprocessing, thresholds, temperature, weights, data, check"}
    with atomic_path(args.out_dir / name, directory=True, replaceable=is_own_export) as folder:
        folder.mkdir()
        onnx_diff = export_onnx(shipped, images, reference, folder / f"{name}.onnx", args.exporter)
        save_traced(traced, folder / f"{name}.torchscript.pt")
        checks = {"test_images": len(images), "images_from": origin, "tolerance": 1e-4, "onnx_max_abs_diff": onnx_diff,
                  "torchscript_max_abs_diff": script_diff, "onnx_exporter": args.exporter,
                  "onnxruntime": onnxruntime.__version__, "torch": str(torch.__version__),
                  "model_sha256": file_sha256(path), "model_fingerprint": model.fingerprint(),
                  "against": "the pipeline's path: float16 features, the model file's head"}
        write_json(folder / f"{name}.json", export_description(model, checks))
        write_text(folder / "MODEL_CARD.md", model_card(model, files, summary, note, per_class))
    print(f"export {name}: {args.out_dir / name}/ ({len(images)} test images: max |onnxruntime - PyTorch| "
          f"{onnx_diff:.1e}, TorchScript {script_diff:.1e}; {time.perf_counter() - start:.1f} s)")
    return checks


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    params = read_params(args.params)
    names = check_model_names(args.models or [*(params.get("models") or []), *finetuned_models(params)])
    data = section(DataParams, params, "data")
    refuse_pipeline_folder("--out-dir", args.out_dir, data.raw)
    pretrained_cfg = section(PretrainedParams, params, "pretrained")
    for path in (args.out_dir, *(args.out_dir / name for name in names)):
        if path.exists() and not path.is_dir():
            raise UserError(f"--out-dir: {path} is a file, not a folder; choose another --out-dir (nothing was changed)")
    for name in names:
        folder = args.out_dir / name
        if folder.is_dir() and not is_own_export(folder):
            raise UserError(f"{folder} exists and is not an earlier export of {name}; choose another --out-dir "
                            "(nothing was changed)")
        if not (args.models_dir / f"{name}.pt").is_file():
            raise UserError(f"{args.models_dir / f'{name}.pt'} not found; run dvc repro to train {name} first")
    return {name: export_model(name, args, Path(data.raw), pretrained_cfg) for name in names}


def run() -> None:
    run_cli(main)


if __name__ == "__main__":
    run()
