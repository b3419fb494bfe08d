"""Shipping a trained model: the feature network + trained head as one network, written as ONNX
and TorchScript, checked against the pipeline's own path.

The network takes uint8 RGB images of shape (N, 3, S, S), prepared exactly as the JSON beside
it says (data/preprocess.py: describe_preprocessing), and returns (N, classes) probabilities:
scaling to 0..1, the backbone's mean/std normalisation, the frozen backbone, the features
rounded to float16 as the feature store keeps them, the trained linear layer, the model file's
temperature and the softmax all run inside the graph. So a consumer with only onnxruntime,
numpy and Pillow gets ``plankton-predict``'s probabilities.

The check runs test images through onnxruntime (and the traced TorchScript module) and
through the pipeline's path (models/feature_net.py on the CPU in float32, then the model
file's head), and refuses the export when the largest difference of any probability is 1e-4
or more.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from plankton_transfer.data.preprocess import describe_preprocessing
from plankton_transfer.errors import UserError
from plankton_transfer.models.feature_net import FeatureExtractor, FeatureNetwork, network_for
from plankton_transfer.models.model_file import ModelFile
from plankton_transfer.params.pretrained import PretrainedParams

EXPORT_FORMAT = "plankton-transfer-export/2"
TOLERANCE = 1e-4
OPSET = 18
EXPORTERS = ("dynamo", "torchscript")


class ShippedClassifier(nn.Module):
    """uint8 RGB images (N, 3, S, S) -> class probabilities (N, classes)."""

    def __init__(self, network: FeatureNetwork, head: nn.Linear, temperature: float) -> None:
        super().__init__()
        self.network, self.head = network, head
        self.register_buffer("temperature", torch.tensor(temperature, dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.network(images).to(torch.float16).to(torch.float32)  # as the feature store keeps them
        return torch.softmax(self.head(features) / self.temperature, dim=1)


def shipped_model(model: ModelFile, pretrained_cfg: PretrainedParams) -> ShippedClassifier:
    """The model file's feature network (its recorded weights), head and temperature, on the CPU in float32."""
    shipped = ShippedClassifier(network_for(model, pretrained_cfg), model.head.module(), model.temperature)
    return shipped.eval().requires_grad_(False)


def reference_probabilities(shipped: ShippedClassifier, model: ModelFile, images: torch.Tensor,
                            chunk: int = 16) -> np.ndarray:
    """The pipeline's path (plankton-predict's, on the CPU): float16 features, then the head."""
    extractor = FeatureExtractor(shipped.network, torch.device("cpu"), None)
    features = np.concatenate([extractor(images[i:i + chunk]) for i in range(0, len(images), chunk)])
    extractor.network.to(memory_format=torch.contiguous_format)  # back to the layout the export traces
    return model.probabilities(features)


def largest_difference(run, images: torch.Tensor, reference: np.ndarray, chunk: int = 16) -> float:
    outputs = np.concatenate([run(images[i:i + chunk]) for i in range(0, len(images), chunk)])
    return float(np.abs(outputs - reference).max())


def refuse_if_different(kind: str, difference: float) -> None:
    if not difference < TOLERANCE:
        raise UserError(f"the {kind} export differs from PyTorch by {difference:.2e} (limit {TOLERANCE:g}) on the test "
                        "images; nothing was written: report this with the model and library versions")


def export_onnx(shipped: ShippedClassifier, images: torch.Tensor, reference: np.ndarray, path: Path,
                exporter: str = "dynamo") -> float:
    """Write ``path`` and check it with onnxruntime against ``reference``; returns the largest difference."""
    import onnxruntime

    names = {"input_names": ["image"], "output_names": ["probabilities"]}
    example = images[:2] if len(images) > 1 else torch.cat([images, images])  # batch 1 would be fixed in the graph
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter announces its future
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(shipped, (example,), str(path), dynamo=True, external_data=False, opset_version=OPSET,
                              dynamic_shapes={"images": {0: batch}}, verbose=False, **names)
        else:
            torch.onnx.export(shipped, (example,), str(path), dynamo=False, opset_version=17,
                              dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}}, **names)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    difference = largest_difference(lambda x: session.run(None, {"image": x.numpy()})[0], images, reference)
    refuse_if_different("ONNX", difference)
    return difference


def trace_checked(shipped: ShippedClassifier, images: torch.Tensor, reference: np.ndarray) -> tuple[object, float]:
    """``shipped`` traced, refused unless it matches ``reference``; and the largest difference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's own deprecation notices
        traced = torch.jit.trace(shipped, images[:2], check_trace=False)  # the batch size stays free when tracing
        with torch.inference_mode():
            difference = largest_difference(lambda x: traced(x).numpy(), images, reference)
    refuse_if_different("TorchScript", difference)
    return traced, difference


def save_traced(traced, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced.save(str(path))


def export_description(model: ModelFile, checks: dict) -> dict:
    """The JSON beside the exported files: everything a consumer needs, from the model file alone."""
    recipe = model.input
    size = recipe.preprocess.input_size
    return {
        "format": EXPORT_FORMAT,
        "model": model.name,
        "backbone": model.backbone,
        "classes": list(model.classes),
        "input": {"name": "image", "dtype": "uint8", "shape": ["batch", 3, size, size], "layout": "NCHW",
                  "channels": "RGB"},
        "output": {"name": "probabilities", "shape": ["batch", len(model.classes)],
                   "meaning": "calibrated class probabilities, in the order of 'classes'"},
        "preprocessing": describe_preprocessing(recipe.preprocess, recipe.mode, recipe.image),
        "inside_graph": {"scale": "x / 255", "mean": list(recipe.preprocess.mean), "std": list(recipe.preprocess.std),
                         "then": "backbone, features rounded to float16, linear layer, logits / temperature, softmax",
                         "temperature": model.temperature},
        "thresholds": {"target_precision": model.thresholds.target_precision, "rule": model.thresholds.rule,
                       "per_class": model.thresholds.per_class,
                       "meaning": "an image whose top probability is under its class's threshold, or whose class has "
                                  "none (null), needs a person's review"},
        "weights": {"description": model.weights.description, "file": model.weights.file,
                    "sha256": model.weights.sha256, "check": model.weights.check,
                    "pretrained": model.weights.pretrained, "fine_tuned": model.backbone_state is not None},
        "data": {"source": model.data.source, "split_sha256": model.data.split_sha256,
                 "images": model.data.sizes},
        "check": checks,
    }
