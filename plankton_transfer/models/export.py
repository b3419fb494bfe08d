"""Shipping a trained model: backbone + trained head + normalisation as one network, written
as ONNX and TorchScript, checked against the pipeline's own PyTorch path.

The network takes uint8 RGB images of shape (N, 3, S, S) (the caller resizes and pads or crops
them as the JSON describes, exactly as :func:`~plankton_transfer.data.preprocess.make_transform`
does) and returns (N, classes) probabilities: scaling to 0..1, the backbone's mean/std
normalisation, the frozen backbone, the trained linear layer, the model file's temperature and
the softmax all run inside the graph.

The check runs the test images through onnxruntime (and the traced TorchScript module) and
through the pipeline's path (the PyTorch backbone in float32, then
:func:`~plankton_transfer.models.heads.head_probabilities`), and refuses the export when the
largest difference of any probability is 1e-4 or more.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from plankton_transfer.data.preprocess import Normalize, Preprocess
from plankton_transfer.errors import UserError
from plankton_transfer.files import atomic_path
from plankton_transfer.models.heads import head_probabilities
from plankton_transfer.models.inference import backbone_for
from plankton_transfer.params import PretrainedParams

EXPORT_FORMAT = "plankton-transfer-export/1"
TOLERANCE = 1e-4
OPSET = 18
EXPORTERS = ("dynamo", "torchscript")


def head_temperature(record: dict) -> float:
    """The softmax temperature a model file carries (1.0 when it was not calibrated)."""
    calibration = record.get("calibration") if isinstance(record.get("calibration"), dict) else {}
    return float(record.get("temperature", calibration.get("temperature", 1.0)) or 1.0)


class ShippedClassifier(nn.Module):
    """uint8 RGB images (N, 3, S, S) -> class probabilities (N, classes)."""

    def __init__(self, backbone: nn.Module, pre: Preprocess, head: dict, temperature: float) -> None:
        super().__init__()
        self.backbone, self.normalize = backbone, Normalize(pre.mean, pre.std)
        self.head = nn.Linear(head["weight"].shape[1], head["weight"].shape[0])
        self.head.load_state_dict({"weight": head["weight"].float(), "bias": head["bias"].float()})
        self.register_buffer("temperature", torch.tensor(temperature, dtype=torch.float32))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.features(images)) / self.temperature, dim=1)


def shipped_model(record: dict, pretrained_cfg: PretrainedParams) -> ShippedClassifier:
    """The model file's backbone (its recorded weights), head and preprocessing, on the CPU in float32."""
    model = ShippedClassifier(backbone_for(record, pretrained_cfg), Preprocess.from_record(record["preprocess"]),
                              record["head"], head_temperature(record))
    return model.eval().requires_grad_(False)


@torch.inference_mode()
def reference_probabilities(model: ShippedClassifier, record: dict, images: torch.Tensor,
                            chunk: int = 16) -> np.ndarray:
    """The pipeline's path: float32 backbone features, then the model file's head function."""
    features = np.concatenate([model.features(images[i:i + chunk]).numpy() for i in range(0, len(images), chunk)])
    return head_probabilities(record, features)


def largest_difference(run, images: torch.Tensor, reference: np.ndarray, chunk: int = 16) -> float:
    outputs = np.concatenate([run(images[i:i + chunk]) for i in range(0, len(images), chunk)])
    return float(np.abs(outputs - reference).max())


def refuse_if_different(kind: str, difference: float) -> None:
    if not difference < TOLERANCE:
        raise UserError(f"the {kind} export differs from PyTorch by {difference:.2e} (limit {TOLERANCE:g}) on the test "
                        "images; nothing was written: report this with the model and library versions")


def export_onnx(model: ShippedClassifier, images: torch.Tensor, reference: np.ndarray, path: Path,
                exporter: str = "dynamo") -> float:
    """Write ``path`` if onnxruntime matches ``reference`` on ``images``; returns the largest difference."""
    import onnxruntime

    names = {"input_names": ["image"], "output_names": ["probabilities"]}
    example = images[:2] if len(images) > 1 else torch.cat([images, images])  # batch 1 would be fixed in the graph
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter announces its future
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(model, (example,), str(tmp), dynamo=True, external_data=False, opset_version=OPSET,
                              dynamic_shapes={"images": {0: batch}}, verbose=False, **names)
        else:
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=17,
                              dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}}, **names)
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        difference = largest_difference(lambda x: session.run(None, {"image": x.numpy()})[0], images, reference)
        refuse_if_different("ONNX", difference)
    return difference


def trace_checked(model: ShippedClassifier, images: torch.Tensor, reference: np.ndarray) -> tuple[object, float]:
    """``model`` traced, refused unless it matches ``reference``; and the largest difference.
    Nothing is written, so the export can check both formats before writing either."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's own deprecation notices
        traced = torch.jit.trace(model, images[:2], check_trace=False)  # the batch size stays free when tracing
        with torch.inference_mode():
            difference = largest_difference(lambda x: traced(x).numpy(), images, reference)
    refuse_if_different("TorchScript", difference)
    return traced, difference


def save_traced(traced, path: Path) -> None:
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced.save(str(tmp))


def preprocessing_description(record: dict) -> dict:
    """What the caller does before the network, and what the network does itself."""
    pre, mode = Preprocess.from_record(record["preprocess"]), record["preprocess"]["mode"]
    steps = {
        "pad": f"resize the longer side to {pre.input_size} px keeping the aspect ratio ({pre.interpolation}), "
               f"centre it on a {pre.input_size}x{pre.input_size} square filled with the median colour of the "
               "image's outermost pixel ring (Pillow ImageOps.pad)",
        "crop": f"resize the shorter side to {pre.resize_size} px ({pre.interpolation}, antialiased), then take the "
                f"centre {pre.input_size}x{pre.input_size}",
    }
    return {
        "input": {"name": "image", "dtype": "uint8", "shape": ["batch", 3, pre.input_size, pre.input_size],
                  "layout": "NCHW", "channels": "RGB"},
        "done_by_caller": {"mode": mode, "resize": steps[mode], **dataclasses.asdict(pre),
                           "colour": "8-bit RGB: greyscale copied to 3 channels, transparency flattened onto white, "
                                     "16-bit greyscale stretched from its min..max (plankton_transfer/data/images.py)"},
        "inside_graph": {"scale": "x / 255", "mean": list(pre.mean), "std": list(pre.std),
                         "then": "backbone, linear layer, logits / temperature, softmax"},
        "reference_code": "plankton_transfer.data.preprocess.make_transform(Preprocess(...), mode)",
    }


def export_description(record: dict, checks: dict) -> dict:
    """The JSON beside the exported files."""
    return {
        "format": EXPORT_FORMAT,
        "model": record["backbone"],
        "classes": list(record["classes"]),
        "output": {"name": "probabilities", "shape": ["batch", len(record["classes"])],
                   "meaning": "class probabilities, in the order of 'classes'"},
        "preprocessing": preprocessing_description(record),
        "temperature": head_temperature(record),
        "thresholds": record.get("thresholds"),
        "weights": {k: record["weights"].get(k) for k in ("description", "file", "sha256", "check", "pretrained")},
        "check": checks,
    }
