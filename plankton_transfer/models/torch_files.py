"""Loading and saving PyTorch files safely: tensors and plain values only, never code.

Every weight file and model file goes through :func:`load_tensor_file`, which loads with
``torch.load(weights_only=True)``: a pickle that would run code is refused with one line.
"""
from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

from plankton_transfer.errors import UserError


def load_tensor_file(path: str | Path) -> dict:
    """Load tensors only (``weights_only=True``): a pickle that would run code is refused.

    Every failure is one line saying what the file is and what to do; torch's own advice to
    load with ``weights_only=False`` (which would run the file's code) is never passed on.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found; check the path")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a weight or model file; give the file's path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise UserError(f"{path} holds Python objects other than tensors and was not loaded (loading it could "
                            "run code); use a file saved as plain tensors") from None
        raise UserError(f"{path} is not a PyTorch weight or model file (damaged, truncated or another format); "
                        "fetch or train it again") from None
    # what torch's readers raise on arbitrary bytes (measured on text, truncated and random files)
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, struct.error,
            zipfile.BadZipFile):
        raise UserError(f"{path} is not a readable PyTorch file (truncated, damaged or another format); "
                        "fetch or train it again") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not the dictionary of tensors of a weight or model "
                        "file; give the official weight file or a model file from the train stage")
    return state
