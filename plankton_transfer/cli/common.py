"""What the commands share: where they may write."""
from __future__ import annotations

from pathlib import Path

from plankton_transfer.errors import UserError

PIPELINE_FOLDERS = ("data", "models", "metrics", "plots", ".dvc")  # written by dvc repro (or DVC itself)


def refuse_pipeline_folder(option: str, out: Path, raw: str | None = None) -> None:
    """An output folder never lies inside the pipeline's own folders or the training images: DVC
    would remove it on the next ``dvc repro`` (or train on it)."""
    real = out.resolve()
    places = [(Path(name).resolve(), f"{name}/ (written by dvc repro)") for name in PIPELINE_FOLDERS]
    if raw:
        places.append((Path(raw).resolve(), f"data.raw ({raw}): the training images"))
    for place, what in places:
        if real == place or real.is_relative_to(place):
            raise UserError(f"{option} {out} lies inside {what}; write it elsewhere, e.g. {option} export "
                            "(nothing was changed)")
