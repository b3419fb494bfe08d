"""Devices, seeds and library versions: what every torch stage sets up the same way."""
from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch

from plankton_transfer.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA where there is none is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but no CUDA GPU is visible; set the device param to auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use auto, cpu or cuda") from None


def seed_everything(seed: int) -> torch.Generator:
    """Seed random, numpy and torch; returns a generator for data order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def use_deterministic_algorithms() -> None:
    """Bitwise-repeatable results on the same machine (cuBLAS needs its workspace setting)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def environment(device: torch.device) -> dict:
    """Library versions and hardware, recorded beside the metrics."""
    import torchvision

    info = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion object would not load with weights_only
        "torchvision": str(torchvision.__version__),
        "numpy": np.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        pass
    return info
