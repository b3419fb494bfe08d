"""``ecotaxa``: how the filter stage reads ``data.raw`` when it is an unzipped EcoTaxa export."""
from __future__ import annotations

import dataclasses

from plankton_transfer.errors import UserError
from plankton_transfer.params.core import check_choice

ECOTAXA_CATEGORY_COLUMNS = ("object_annotation_category", "object_annotation_hierarchy")
ECOTAXA_STATUSES = ("validated", "predicted", "dubious")  # EcoTaxa's annotation statuses


@dataclasses.dataclass(frozen=True)
class EcotaxaParams:
    category: str = "object_annotation_category"
    mapping: str | None = None
    statuses: tuple[str, ...] = ("validated",)

    def __post_init__(self) -> None:
        check_choice("ecotaxa.category", self.category, ECOTAXA_CATEGORY_COLUMNS)
        if not self.statuses:
            raise UserError("params.yaml: ecotaxa.statuses is empty; list the statuses to train on, e.g. [validated]")
        for status in self.statuses:
            check_choice("ecotaxa.statuses", status, ECOTAXA_STATUSES)
        if self.mapping is not None and not self.mapping.strip():
            raise UserError("params.yaml: ecotaxa.mapping is empty; give a CSV file name or null")
