"""Stage finetune@<backbone>: fine-tune the backbone and a new head on the split's images.

Off by default (``finetune.models: []``); the study's protocol (frozen backbone, new last
layer: the train stage) stays the pipeline's. The fine-tuned model is ``<backbone>-ft``.

Inputs:  ``--split-dir``/{train,val,test}.csv; the images under ``data.raw`` (from the params
         file, or ``--raw``); the backbone's weight file, found and verified as in the extract
         stage (``<pretrained.dir>/<backbone>/`` or a pinned pip package, never the network).
Outputs: ``--model-file`` (models/model_file.py ModelFile, as the train stage's, with the
         fine-tuned backbone's weights): head, temperature and thresholds fitted on the
         validation split;
         ``--features``: the fine-tuned network's features of every image (no augmentation;
         the extract stage's FeatureMeta), so evaluate runs on it unchanged;
         ``--checkpoints``: the last finished epoch (DVC ``persist``: a killed run resumes
         from it; replaced by finished.json once the outputs are written);
         ``--live-dir``: DVCLive per-epoch train/val loss and accuracy (``dvc plots``, compare).
Params:  ``finetune``, ``augment``, ``extract`` (preprocessing, and ``tta`` for the features),
         ``image``, ``pretrained``, ``thresholds``, ``base.seed`` (library:
         plankton_transfer/models/finetuning.py, checkpoints.py; data/augment.py).

Settings are checked before any compute (an unknown block, ``unfreeze`` beyond the network,
negative epochs: one line). On CPU the defaults run the bundled sample in minutes; GPU runs
and their cost: docs/finetuning.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dvclive import Live

from plankton_transfer.data.split_files import read_splits
from plankton_transfer.errors import run_cli
from plankton_transfer.models.checkpoints import mark_finished
from plankton_transfer.models.extraction import FineTunedBackbone, run_extraction
from plankton_transfer.models.finetuning import Finetuned, Images, finetune, finetuned_model_file, plan_finetuning
from plankton_transfer.models.model_file import ModelFile
from plankton_transfer.models.provenance import InputRecipe
from plankton_transfer.params.augment import AugmentParams
from plankton_transfer.params.base import BaseParams
from plankton_transfer.params.core import params_argument, read_params, section
from plankton_transfer.params.data import DataParams
from plankton_transfer.params.extract import ExtractParams
from plankton_transfer.params.finetune import FinetuneParams
from plankton_transfer.params.image import ImageParams
from plankton_transfer.params.pretrained import PretrainedParams
from plankton_transfer.params.thresholds import ThresholdParams
from plankton_transfer.settings import run_settings

CURVES = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")  # as the train stage logs them


def log_history(live_dir: Path, result: Finetuned) -> None:
    """Per-epoch curves, in the train stage's layout (compare overlays every model's)."""
    with Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        for epoch, row in enumerate(result.history, start=1):
            live.step = epoch
            for key in CURVES:
                split, metric = key.split("_", 1)
                live.log_metric(f"{split}/{metric}", round(row[key], 6))
            live.next_step()
        live.summary = {"best_epoch": result.best_epoch, "epochs": result.epochs,
                        "best_val_loss": round(result.best_val_loss, 6)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="backbone name (a module of plankton_transfer/models/backbones/)")
    p.add_argument("--raw", type=Path, help="image folder (default: data.raw from the params file)")
    p.add_argument("--split-dir", type=Path, default=Path("data/split"))
    p.add_argument("--model-file", type=Path, required=True, help="the fine-tuned model file (models/<backbone>-ft.pt)")
    p.add_argument("--features", type=Path, required=True, help="the fine-tuned network's features folder")
    p.add_argument("--checkpoints", type=Path, required=True, help="epoch checkpoints (kept between runs)")
    p.add_argument("--live-dir", type=Path, required=True, help="DVCLive folder for the training curves")
    params_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> ModelFile:
    args = parse_args(argv)
    params = read_params(args.params)  # every section checked, unfreeze against each backbone's blocks
    cfg, augment_cfg = section(FinetuneParams, params, "finetune"), section(AugmentParams, params, "augment")
    extract_cfg, image_cfg = section(ExtractParams, params, "extract"), section(ImageParams, params, "image")
    pretrained_cfg, seed = section(PretrainedParams, params, "pretrained"), section(BaseParams, params, "base").seed
    target = section(ThresholdParams, params, "thresholds").target_precision
    raw, settings = args.raw or Path(section(DataParams, params, "data").raw), run_settings()
    plan = plan_finetuning(args.model, cfg, pretrained_cfg)  # weights found and verified before any compute
    parts = read_splits(args.split_dir)
    images = Images(raw, parts, InputRecipe(mode=extract_cfg.preprocess, preprocess=plan.backbone.preprocess,
                                            image=image_cfg))
    result = finetune(plan, images, cfg, augment_cfg, seed, settings, args.checkpoints)
    meta = run_extraction(args.model, raw, parts, args.features, extract_cfg, image_cfg, pretrained_cfg, seed,
                          settings, FineTunedBackbone(result.backbone_state, plan.description))
    model = finetuned_model_file(args.model_file.stem, result, args.features, meta, cfg, augment_cfg, plan, target,
                                 seed)
    model.save(args.model_file)
    log_history(args.live_dir, result)
    mark_finished(args.checkpoints, {"model": model.name, "epochs": result.epochs, "best_epoch": result.best_epoch})
    t = model.training
    print(f"finetune {model.name}: {plan.description}, {t.epochs} epochs (best {t.best_epoch}), val loss "
          f"{t.best_val_loss:.4f}, {t.seconds:.1f} s{f' (resumed after epoch {result.resumed_from})' if result.resumed_from else ''}; "
          f"features {meta.images_per_s} images/s; temperature {model.calibration.temperature:.3f}")
    if not t.converged:
        print(f"  warning: {t.convergence_warning(model.name)}", file=sys.stderr)
    return model


if __name__ == "__main__":
    run_cli(main)
