"""A CPR-sized stand-in dataset: K classes x N JPEGs of 255x255, made from the FlowCam sample
by rotation, mirroring and scaling (the images of ../shared/ANCHORS.md's measurements)."""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "flowcam-sample"
SIDE = 255  # the CPR images of the study are 255x255


def source_images() -> dict[str, list[Image.Image]]:
    by_class: dict[str, list[Image.Image]] = {}
    for path in sorted(SAMPLE.glob("*/*.jpg")):
        with Image.open(path) as img:
            by_class.setdefault(path.parent.name, []).append(img.convert("RGB"))
    return by_class


def variant(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    img = img.rotate(float(rng.uniform(0, 360)), resample=Image.Resampling.BILINEAR, expand=True, fillcolor=(235,) * 3)
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    scale = rng.uniform(0.6, 1.0) * SIDE / max(img.size)
    img = img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (SIDE, SIDE), (235, 235, 235))
    canvas.paste(img, ((SIDE - img.width) // 2, (SIDE - img.height) // 2))
    return canvas


def build_class(folder: Path, pool: list[Image.Image], per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
        variant(pool[i % len(pool)], rng).save(folder / f"{i:05d}.jpg", quality=85)


def build_standin(root: Path, classes: int, per_class: int, seed: int = 0, workers: int = 1) -> Path:
    """``root/class_XX/*.jpg``; class k draws from sample class k mod 6 with its own random stream
    (seed, k), so the images do not depend on ``workers`` (processes, one class each). Reused if complete."""
    marker = root / f".complete-{classes}x{per_class}"
    if marker.exists():
        return root
    sources = list(source_images().values())
    jobs = [(root / f"class_{k:02d}", sources[k % len(sources)], per_class, np.random.SeedSequence([seed, k]))
            for k in range(classes)]
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            pool.starmap(build_class, jobs)
    else:
        for job in jobs:
            build_class(*job)
    marker.touch()
    return root
