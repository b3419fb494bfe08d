"""Classify new images with a trained model (``plankton-predict``, ``make predict``; not a pipeline stage).

    plankton-predict --model efficientnet_lite0 --input new-images/ --out results/new-images
    plankton-predict --model models/alexnet.pt --input cruise-42/ifcb/ --out results/cruise42

--model:  a model name (its trained model file, models/<name>.pt) or a model file's path; it
          names its backbone, weight file (found again as in the extract stage and checked
          against the recorded sha256), input recipe, head and per-class thresholds. Its
          unknown detector (<model>.unknown.pt beside it, from the openset stage) flags images
          of no trained class as "unknown"; --no-unknown classifies every image as a trained class.
--input:  an image file or folder (searched recursively as in the filter stage), an unzipped
          EcoTaxa export (ecotaxa_*.tsv; labels ignored) or a folder of IFCB bins
          (.hdr/.adc/.roi), told apart automatically or by --input-type.
--out:    a new folder (or one an earlier prediction run wrote, which is replaced whole):
          predictions.csv (id, file, sample, predicted class or unknown, probability,
          needs_review and why, threshold, unknown score, the next classes with their
          probabilities, error), counts.csv (per sample and class: classify and count,
          probabilistic count, EM), the EcoTaxa upload ecotaxa_<folder>.zip (table + images;
          import it as it is; unknown images unclassified) and run.json.
--tta:    test-time augmentation: each image's features are the mean over its 8 views (rotations
          by 90 degrees and their mirror images), as evaluate scores them with extract.tta (off
          by default; 8 times the compute).
Settings: images are opened as the model file records (image.background, size limits); the
          device (PLANKTON_DEVICE or --device), workers (PLANKTON_WORKERS or --workers) and
          pretrained.dir (--params, default params.yaml when present) say how to run.
Exit:     0 when at least one image was classified; 2 with one line otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from plankton_transfer.data.predictions import (UNKNOWN, PredictionRun, check_output, read_taxon_names,
                                                 write_results)
from plankton_transfer.data.sources import KINDS, Inputs, list_inputs, readable
from plankton_transfer.errors import UserError, run_cli
from plankton_transfer.evaluation.abundance import sample_counts
from plankton_transfer.evaluation.summary import file_sha256
from plankton_transfer.models.inference import Classified, classify_items, load_predictor
from plankton_transfer.models.model_file import ModelFile
from plankton_transfer.models.unknown import UnknownDetector, detector_path
from plankton_transfer.params.core import PARAMS_FILE, read_params, section
from plankton_transfer.params.pretrained import PretrainedParams
from plankton_transfer.settings import run_settings


def whole_number(least: int):
    """An argparse type: a whole number >= ``least`` (argparse turns the error into one line)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is under {least}")
        return value
    parse.__name__ = f"whole number >= {least}"
    return parse


PREFIX_FROM = {"out": "the --out folder's name", "input": "the input folder's name"}  # an image folder's id prefix


def add_model_arguments(p: argparse.ArgumentParser, prefix_from: str = "out") -> None:
    """The options predict and select share: the model, the input, how to run. ``prefix_from``:
    where an image folder's default object id prefix comes from (see :func:`prepare`)."""
    p.add_argument("--model", "--model-file", dest="model", required=True, help="model name or model file")
    p.add_argument("--input", "--images", dest="input", type=Path, required=True)
    p.add_argument("--input-type", choices=["auto", *KINDS], default="auto")
    p.add_argument("--out", type=Path, required=True, help="the results folder (new, or an earlier run's)")
    p.add_argument("--taxon-names", type=Path, help="CSV with columns class,ecotaxa: EcoTaxa names for the classes")
    p.add_argument("--object-id-prefix", help=f"prefix of the EcoTaxa object ids (default: {PREFIX_FROM[prefix_from]} "
                                              "+ '_' for image folders, none for EcoTaxa and IFCB ids)")
    p.add_argument("--device", help="auto | cpu | cuda (default: PLANKTON_DEVICE, else auto)")
    p.add_argument("--batch-size", type=whole_number(1), default=32)
    p.add_argument("--workers", type=whole_number(-1), help="image decoding processes (default: PLANKTON_WORKERS, "
                                                            "else -1 = from the usable cores)")
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="where model names are looked up")
    p.add_argument("--params", type=Path, help=f"params file for pretrained.dir (default: {PARAMS_FILE} when present)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--top-k", type=whole_number(1), default=3, help="classes listed per image")
    p.add_argument("--no-unknown", action="store_true",
                   help="ignore the model's unknown detector: every image gets a trained class")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: mean over the 8 rotations/flips of "
                                                      "each image (as evaluate with extract.tta)")
    return p.parse_args(argv)


def model_file(value: str, models_dir: Path) -> Path:
    """A model file path as given, or ``<models_dir>/<name>.pt`` for a model name."""
    path = Path(value)
    if path.is_file() or path.suffix in (".pt", ".pth") or "/" in value:  # a folder named like the model: a name
        return path
    named = models_dir / f"{value}.pt"
    if not named.exists():
        trained = sorted(p.stem for p in models_dir.glob("*.pt")) if models_dir.is_dir() else []
        raise UserError(f"no model file {named} for '{value}'; give a model file's path or a trained model "
                        f"({', '.join(trained) or f'none in {models_dir}: run dvc repro'})")
    return named


def checked_device(name: str, source: str) -> str:
    """The device asked for (``source``: the option or variable that gave it), checked before
    any work, with the message naming where it came from."""
    import torch

    if not (name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())):
        raise UserError(f"{source} is {name!r}; use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{source} is {name!r} but no CUDA GPU is visible here; use {source} auto or cpu")
    return name


def pretrained_settings(params_file: Path | None) -> PretrainedParams:
    """pretrained.dir from --params, or from params.yaml in the working folder when there is one."""
    path = params_file or (PARAMS_FILE if PARAMS_FILE.is_file() else None)
    if path is None:
        return PretrainedParams()
    try:
        params = read_params(path)
        return section(PretrainedParams, params, "pretrained") if "pretrained" in params else PretrainedParams()
    except UserError as err:
        if params_file:
            raise
        raise UserError(f"{err} (read from {PARAMS_FILE} in the working folder: pass --params with your project's "
                        "params file, or run from another folder)") from None


@dataclasses.dataclass
class Prepared:
    """What predict and select both set up before classifying."""

    path: Path
    model: ModelFile
    inputs: Inputs
    taxon_names: dict[str, str]
    device: str
    workers: int
    id_prefix: str


def prepare(args: argparse.Namespace, prefix_from: str = "out") -> Prepared:
    """Check every argument and the output before any work; read the model and the input.
    An image folder's object ids get a prefix (unless --object-id-prefix says otherwise): the
    --out folder's name (``prefix_from="out"``, predict: runs to different folders never merge
    in one EcoTaxa project) or the input folder's (``"input"``, select: an image keeps its id
    from one selection round to the next)."""
    settings = run_settings()
    device = checked_device(*((args.device, "--device") if args.device else (settings.device, "PLANKTON_DEVICE")))
    path = model_file(args.model, args.models_dir)
    check_output(args.out, args.input, path, args.taxon_names)
    model = ModelFile.load(path)
    taxon_names = read_taxon_names(args.taxon_names, model.classes)
    inputs = list_inputs(args.input, args.input_type)
    if not inputs.items:
        raise UserError(f"no images in {args.input} ({KINDS[inputs.kind]}); nothing to classify")
    if inputs.decided_by:
        print(f"input: {readable(str(args.input))} read as {KINDS[inputs.kind]} ({inputs.decided_by}); "
              "--input-type folder classifies every image file instead", file=sys.stderr)
    folder_name = args.out.name if prefix_from == "out" else inputs.root.resolve().name
    prefix = args.object_id_prefix if args.object_id_prefix is not None else (
        f"{folder_name}_" if inputs.kind == "folder" else "")
    return Prepared(path, model, inputs, taxon_names, device,
                    settings.workers if args.workers is None else args.workers, prefix)


def unknown_detector(args: argparse.Namespace, ready: Prepared) -> UnknownDetector | None:
    """The model's unknown detector (``<model>.unknown.pt`` beside its file), unless --no-unknown."""
    path = detector_path(ready.path)
    if args.no_unknown:
        return None
    if not path.is_file():
        print(f"note: no unknown detector {path} beside the model file (the openset stage writes it: dvc repro): "
              f"every image gets one of the {len(ready.model.classes)} trained classes", file=sys.stderr)
        return None
    return UnknownDetector.load_for(path, ready.model)


def counts_table(ready: Prepared, classified: Classified) -> pd.DataFrame:
    """counts.csv: per sample (IFCB bin, EcoTaxa sample_id, else the input folder) and class."""
    model, table = ready.model, classified.table
    samples = [ready.inputs.items[i].sample or ready.inputs.root.name for i in classified.rows]
    known = (table["predicted"].iloc[classified.rows] != UNKNOWN).to_numpy()
    train = model.data.class_counts.get("train", {})
    prior = np.array([train.get(c, 0) for c in model.classes], dtype=float)
    prior = prior / prior.sum() if prior.sum() > 0 else np.full(len(model.classes), 1 / len(model.classes))
    return sample_counts(samples, classified.proba, known, list(model.classes), prior)


def summary_lines(name: str, inputs: Inputs, table: pd.DataFrame, seconds: float, device, upload: Path,
                  out: Path) -> list[str]:
    failed = int((table["error"] != "").sum())
    done = len(table) - failed
    ignored = sum(inputs.ignored.values())
    details = ", ".join(f"{reason} {n}" for reason, n in sorted(inputs.ignored.items()) if n)
    reviewed = table[table["error"] == ""]["review_reason"]
    always = int(reviewed.str.startswith("always").sum())
    return [f"predict {name} on {KINDS[inputs.kind]} {readable(str(inputs.root))}: {done} images classified, "
            f"{failed} failed{' (reasons in the error column)' if failed else ''}, "
            f"{ignored} ignored{f' ({details})' if details else ''}",
            f"  {int((reviewed != '').sum())} of {done} need review ({always} always: their class has no "
            f"auto-accept threshold; {int(reviewed.str.startswith('unknown').sum())} unknown: no trained class "
            f"fits); {done / seconds if seconds > 0 else 0:.1f} images/s on {device}",
            f"  -> {readable(str(out))}/: predictions.csv, counts.csv, {upload.name} (upload to EcoTaxa as it is), "
            "run.json"]


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    ready = prepare(args)
    detector = unknown_detector(args, ready)
    predictor = load_predictor(ready.model, pretrained_settings(args.params), ready.device, tta=args.tta)
    classified = classify_items(predictor, ready.inputs.items, args.batch_size, ready.workers, args.top_k, detector)
    table, seconds = classified.table, classified.seconds
    failed = int((table["error"] != "").sum())
    run = PredictionRun(command="plankton-predict", model=ready.model.name, model_file=str(ready.path),
                        model_sha256=file_sha256(ready.path), input=readable(str(args.input)),
                        input_kind=ready.inputs.kind, images=len(table) - failed, failed=failed,
                        ignored=dict(ready.inputs.ignored), ecotaxa_objects=0,
                        settings={"top_k": args.top_k, "batch_size": args.batch_size, "device": str(predictor.device),
                                  "tta": args.tta, "unknown": None if detector is None else {
                                      "score": detector.score, "threshold": detector.threshold,
                                      "file": str(detector_path(ready.path))}})
    upload, problems = write_results(args.out, table, ready.inputs, run, ready.taxon_names, ready.id_prefix,
                                     predictor.image, counts=counts_table(ready, classified))
    for problem in problems[:10]:
        print(f"warning: {upload}: {problem}", file=sys.stderr)
    print("\n".join(summary_lines(ready.model.name, ready.inputs, table, seconds, predictor.device, upload, args.out)))
    if failed == len(table):
        raise UserError(f"none of the {len(table)} images could be classified (reasons in the error column of "
                        f"{args.out / 'predictions.csv'})")
    return table


def run() -> None:
    run_cli(main)


if __name__ == "__main__":
    run()
