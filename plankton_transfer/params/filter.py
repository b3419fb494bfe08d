"""``filter``: which classes and files the filter stage keeps."""
from __future__ import annotations

import dataclasses

from plankton_transfer.params.core import check_choice, check_range


@dataclasses.dataclass(frozen=True)
class FilterParams:
    min_images_per_class: int = 10
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_per_class: int | None = None
    strict: bool = False
    label_conflicts: str = "drop"

    def __post_init__(self) -> None:
        check_choice("filter.label_conflicts", self.label_conflicts, ("drop", "error"))
        check_range("filter.min_images_per_class", self.min_images_per_class, 1)
        if self.max_per_class is not None:
            check_range("filter.max_per_class", self.max_per_class, 1)
