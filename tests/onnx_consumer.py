"""A consumer of an exported model that has only onnxruntime, numpy and Pillow, and follows only
the JSON beside the ONNX file (its "preprocessing" section). No torch, no plankton_transfer:
tests/test_export.py runs it in a process where importing torch fails.

    python tests/onnx_consumer.py export/<model>/<model>.json image... --out probabilities.npy
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

HIGH_BIT_DEPTH = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
ALPHA = {"RGBA", "LA", "PA", "La", "RGBa"}


def resample(name: str) -> int:
    """'PIL.Image.Resampling.BICUBIC' -> Image.Resampling.BICUBIC."""
    return getattr(Image.Resampling, name.rsplit(".", 1)[-1])


def to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """The JSON's "to_rgb" rules, mode by mode."""
    if img.mode == "RGB":
        return img
    if img.mode == "L":
        return img.convert("RGB")
    if img.mode in HIGH_BIT_DEPTH:
        values = np.asarray(img, dtype=np.float64)
        finite = values[np.isfinite(values)]
        low, high = float(finite.min()), float(finite.max())
        scaled = np.zeros_like(values) if high == low else (np.nan_to_num(values, nan=low) - low) * (255.0 / (high - low))
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ALPHA:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, background + (255,)), rgba).convert("RGB")
    return img.convert("RGB")


def fill_colour(rgb: Image.Image) -> tuple[int, ...]:
    """The JSON's padding colour: per channel, numpy.median of the first row, last row, first
    column and last column (corners twice), truncated with int()."""
    a = np.asarray(rgb)
    ring = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return tuple(int(v) for v in np.median(ring, axis=0))


def follow_the_json(description: dict, path: str | Path) -> np.ndarray:
    """One image file as the exported network's uint8 input (3, S, S), step by step as the JSON says."""
    steps = description["preprocessing"]
    img = Image.open(path)  # the first frame of a multi-frame file
    if img.format == "JPEG":
        size = steps["jpeg_draft"]["size"]
        img.draft("RGB", (size, size))
    img.load()
    orientation = img.getexif().get(0x0112, 1)
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        img = ImageOps.exif_transpose(img)
    img = to_rgb(img, tuple(steps["background"]))
    r = steps["resize"]
    if r["mode"] == "pad":
        out = ImageOps.pad(img, (r["size"], r["size"]), method=resample(r["resample"]), color=fill_colour(img),
                           centering=(0.5, 0.5))
    else:
        w, h = img.size
        short = r["resize_size"]
        new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        img = img.resize(new, resample=resample(r["resample"]))
        left, top = round((new[0] - r["size"]) / 2), round((new[1] - r["size"]) / 2)
        out = img.crop((left, top, left + r["size"], top + r["size"]))
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1).copy()


def main(argv: list[str] | None = None) -> np.ndarray:
    import onnxruntime

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("description", type=Path)
    p.add_argument("images", nargs="+")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    description = json.loads(args.description.read_text(encoding="utf-8"))
    batch = np.stack([follow_the_json(description, path) for path in args.images])
    onnx = args.description.with_suffix(".onnx")
    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    proba = session.run(None, {description["input"]["name"]: batch})[0]
    np.save(args.out, proba)
    return proba


def torch_loaded() -> bool:
    return any((name == "torch" or name.startswith("torch.")) and module is not None
               for name, module in sys.modules.items())


if __name__ == "__main__":
    main()
    assert not torch_loaded(), "the consumer must not need torch"
