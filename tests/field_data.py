"""Data from the field, made here: EcoTaxa exports, IFCB bins of both generations, and a small
model file (random AlexNet features) for prediction tests that need no training."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tests.conftest import organism

NON_ASCII_TAXON = "Noctilucá scintillans"


def write_table(path: Path, rows: list[dict], types: bool = True) -> None:
    """An EcoTaxa table: column names, the [t]/[f] row (when ``types``), the rows."""
    frame = pd.DataFrame(rows)
    if types:
        kinds = {c: "[f]" if c in ("img_rank", "object_lat") else "[t]" for c in frame.columns}
        frame = pd.concat([pd.DataFrame([kinds]), frame], ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t", index=False, encoding="utf-8")


def make_ecotaxa_export(root: Path, per_class: int = 6, seed: int = 3) -> dict:
    """Two samples (one table each, images beside them) with validated objects of three
    classes, and the traps: a predicted row, a missing image, a secondary image of an object,
    an unlisted image, an unclassified object, a hidden file. Returns what to expect."""
    rng = np.random.default_rng(seed)
    categories = ["Copepoda", "Diatomea", NON_ASCII_TAXON]
    hierarchy = {"Copepoda": "living>Arthropoda>Copepoda", "Diatomea": "living>Ochrophyta>Diatomea",
                 NON_ASCII_TAXON: "living>Dinoflagellata>Noctilucá scintillans"}
    tables: dict[str, list[dict]] = {"sample_a": [], "sample_b": []}
    for label, name in enumerate(categories):
        for i in range(per_class):
            sample = "sample_a" if i % 2 else "sample_b"
            file = f"images/{label}_{i}.jpg"
            (root / sample / "images").mkdir(parents=True, exist_ok=True)
            organism(rng, label).save(root / sample / file, quality=92)
            tables[sample].append(row(f"{sample}_{label}_{i}", file, "validated", name, hierarchy[name], sample))
    a = root / "sample_a"
    organism(rng, 0).save(a / "images" / "predicted.jpg")
    organism(rng, 1).save(a / "images" / "object_view2.jpg")
    organism(rng, 2).save(a / "images" / "unlisted.jpg")
    organism(rng, 2).save(a / "images" / "unclassified.jpg")
    (a / ".DS_Store").write_bytes(b"\0" * 8)
    first = tables["sample_a"][0]
    tables["sample_a"] += [
        row("obj_predicted", "images/predicted.jpg", "predicted", "Copepoda", hierarchy["Copepoda"], "sample_a"),
        row("obj_missing", "images/missing.jpg", "validated", "Diatomea", hierarchy["Diatomea"], "sample_a"),
        {**first, "img_file_name": "images/object_view2.jpg", "img_rank": "1"},
        row("obj_unclassified", "images/unclassified.jpg", "", "", "", "sample_a"),
    ]
    write_table(a / "ecotaxa_sample_a.tsv", tables["sample_a"])
    write_table(root / "sample_b" / "ecotaxa_sample_b.tsv", tables["sample_b"], types=False)  # no types row
    return {
        "classes": {name: per_class for name in categories},
        "hierarchy": hierarchy,
        "missing": "sample_a/images/missing.jpg",
        "predicted": "sample_a/images/predicted.jpg",
        "secondary": "sample_a/images/object_view2.jpg",
        "unlisted": "sample_a/images/unlisted.jpg",
        "unclassified": "sample_a/images/unclassified.jpg",
        "objects": 3 * per_class + 3,  # main images listed: the validated ones, predicted, missing, unclassified
    }


def row(object_id: str, file: str, status: str, category: str, hierarchy: str, sample: str) -> dict:
    return {"img_file_name": file, "img_rank": "0", "object_id": object_id, "object_lat": "43.68",
            "object_annotation_status": status, "object_annotation_category": category,
            "object_annotation_hierarchy": hierarchy, "sample_id": sample}


def roi_pixels(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width), dtype=np.uint8)


def write_bin(folder: Path, lid: str, rois: list[np.ndarray | None], schema: int, leading: int = 0,
              v2_format: str | None = None) -> dict[str, np.ndarray]:
    """An IFCB bin: ``rois`` (None = a row without an image); returns the expected pixels by ROI id.

    Schema 1: header-less .adc, columns 11/12/13 = width/height/start byte, a trailing comma;
    schema 2: the .hdr names the columns in ADCFileFormat (``v2_format`` overrides it).
    ``leading`` bytes come before the first ROI in the .roi (IFCB1-6 files start with one).
    """
    folder.mkdir(parents=True, exist_ok=True)
    data, lines, expected = bytearray(b"\x07" * leading), [], {}
    for number, pixels in enumerate(rois, start=1):
        height, width = pixels.shape if pixels is not None else (0, 0)
        start = len(data)
        if pixels is not None:
            data += pixels.tobytes()
            expected[f"{lid}_{number:05d}"] = pixels
        width_col, height_col, start_col = (11, 12, 13) if schema == 1 else v2_columns(v2_format or V2_FORMAT)
        cells = [f"{number * 0.5:.3f}"] * (15 if schema == 1 else len((v2_format or V2_FORMAT).split(",")))
        cells[0] = str(number)
        cells[width_col], cells[height_col], cells[start_col] = str(width), str(height), str(start)
        lines.append(",".join(cells) + ("," if schema == 1 else ""))
    (folder / f"{lid}.adc").write_text("\n".join(lines) + "\n")
    (folder / f"{lid}.roi").write_bytes(bytes(data))
    if schema == 1:
        header = '"Imaging FlowCytobot Acquisition Software version 2.0; May 2010"\n'
    else:
        header = ("softwareVersion: Imaging FlowCytobot Acquisition Software version 2.0\nimagerID: 13\t\n"
                  f"ADCFileFormat: {v2_format or V2_FORMAT}\n")
    (folder / f"{lid}.hdr").write_text(header)
    return expected


V2_FORMAT = ("trigger#, ADC_time, PMTA, PMTB, PMTC, PMTD, peakA, peakB, peakC, peakD, time of flight, grabtimestart, "
             "grabtimeend, ROIx, ROIy, ROIwidth, ROIheight,start_byte, comparator_out, STartPoint, SignalLength, "
             "status, runTime, inhibitTime")


def v2_columns(adc_format: str) -> tuple[int, int, int]:
    """Where an ADCFileFormat line puts ROI width, height and start byte."""
    names = ["".join(ch for ch in n.lower() if ch.isalnum()) for n in adc_format.split(",")]
    return tuple(names.index(key) for key in ("roiwidth", "roiheight", "startbyte"))


def tiny_model(classes: tuple[str, ...] = ("a", "b", "c"), seed: int = 0, thresholds: dict | None = None,
               dim: int = 4096, backbone: str = "alexnet"):
    """A model file's record with a randomly initialised backbone (its weights "pretrained" only
    in name unless ``pretrained=False``: prediction then flags every image) and a random head."""
    from plankton_transfer.data.input_spec import Preprocess
    from plankton_transfer.models.linear_head import LinearHead
    from plankton_transfer.models.model_file import Calibration, ModelFile, Thresholds, TrainingInfo
    from plankton_transfer.models.provenance import DataInfo, InputRecipe, WeightsInfo

    generator = torch.Generator().manual_seed(seed)
    per_class = thresholds if thresholds is not None else {c: 0.5 for c in classes}
    return ModelFile(
        name=backbone, backbone=backbone,
        weights=WeightsInfo(source="random-init", pretrained=False, sha256="", file="", check="",
                            description="random init (NOT pretrained)", init_seed=seed),
        input=InputRecipe(mode="pad", preprocess=Preprocess()), feature_dim=dim, classes=tuple(classes),
        head=LinearHead(torch.randn(len(classes), dim, generator=generator) * 0.05, torch.zeros(len(classes))),
        training=TrainingInfo(lr=0.001, epochs=1, best_epoch=1, best_val_loss=1.0, seconds=0.1, lr_sweep={},
                              params={"max_epochs": 100}, seed=seed, features={}, environment={}),
        calibration=Calibration(1.0, 1.0, 1.0, "none"),
        thresholds=Thresholds(target_precision=0.95, split="val", rule="test", per_class=per_class,
                              accepted_images={c: 60 for c in classes}, correct_images={c: 60 for c in classes},
                              predicted_images={c: 60 for c in classes}),
        data=DataInfo(source="tests", split_sha256="0" * 64, class_counts={"train": {c: 10 for c in classes}}))


def tiny_model_file(path: Path, classes: tuple[str, ...] = ("a", "b", "c"), seed: int = 0,
                    thresholds: dict | None = None) -> Path:
    """A model file (tiny_model) saved at ``path``."""
    tiny_model(classes, seed, thresholds).save(path)
    return path


def write_feature_meta(folder: Path, backbone: str, classes: list[str], dim: int, sizes: dict[str, int]) -> None:
    """A features folder's meta.json as the extract stage writes it (random-init weights)."""
    from plankton_transfer.data.input_spec import Preprocess
    from plankton_transfer.models.provenance import DataInfo, FeatureMeta, InputRecipe, WeightsInfo

    FeatureMeta(backbone=backbone,
                weights=WeightsInfo(source="random-init", pretrained=False, sha256="", file="", check="",
                                    description="random init (NOT pretrained)", init_seed=0),
                input=InputRecipe(mode="pad", preprocess=Preprocess()), feature_dim=dim, backbone_parameters=0,
                classes=tuple(classes), data=DataInfo(source="tests", split_sha256="0" * 64,
                                                      class_counts={s: {} for s in sizes} | {"train": {}}),
                seconds=0.1, images_per_s=1.0, decoded_on_device=0, environment={}).save_json(folder / "meta.json")


def lite0_model(classes: tuple[str, ...] = ("a", "b", "c"), mode: str = "pad", seed: int = 0):
    """A model file's record on EfficientNet-Lite0 with its real ImageNet weights (from the pip
    package, verified) and a random head: small enough to export in seconds."""
    import dataclasses

    from plankton_transfer.models.backbones import get_backbone
    from plankton_transfer.models.extraction import weights_info
    from plankton_transfer.models.weights import resolve_weights
    from plankton_transfer.params.pretrained import PretrainedParams

    backbone = get_backbone("efficientnet_lite0")
    weights = weights_info(resolve_weights("efficientnet_lite0", backbone.weights, PretrainedParams()), seed)
    model = tiny_model(classes, seed, dim=backbone.feature_dim, backbone="efficientnet_lite0")
    return dataclasses.replace(model, weights=weights, input=dataclasses.replace(
        model.input, mode=mode, preprocess=backbone.preprocess))


def ifcb_like_roi(rng: np.random.Generator) -> np.ndarray:
    """A grey IFCB-style ROI: a chain of 2-6 dark blurred cells on a mid-grey, noisy background;
    another instrument's look than the bundled FlowCam sample's colour images."""
    from PIL import Image, ImageDraw, ImageFilter

    height, width = int(rng.integers(40, 90)), int(rng.integers(80, 260))
    img = Image.new("L", (width, height), int(rng.integers(170, 215)))
    draw = ImageDraw.Draw(img)
    cells, y = int(rng.integers(2, 7)), height // 2
    size = max(6, min(height // 3, width // (2 * cells)))
    x = int(rng.integers(size, max(size + 1, width - 2 * cells * size)))
    for _ in range(cells):
        draw.ellipse([x - size, y - size // 2 - 3, x + size, y + size // 2 + 3], fill=int(rng.integers(60, 120)))
        x += 2 * size
    pixels = np.asarray(img.filter(ImageFilter.GaussianBlur(1.2)), dtype=float) + rng.normal(0, 6, (height, width))
    return np.clip(pixels, 0, 255).astype(np.uint8)
