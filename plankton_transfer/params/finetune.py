"""``finetune``: the fine-tuning stage family (finetune@<backbone>), off by default.

Beyond the study's protocol (frozen backbone, new last layer): the backbone's last blocks, or
all of it, trained with a new head on the images of the same split, augmented
(``augment`` section). A fine-tuned model is named ``<backbone>-ft`` and is evaluated and
compared beside the frozen ones. What a block is, per backbone, is in its registry entry
(models/backbones/: ``Backbone.blocks``); whether ``unfreeze`` fits the backbone is checked
with every section (params/every_section.py), before any compute.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from plankton_transfer.errors import UserError
from plankton_transfer.params.core import MODEL_NAME, check_choice, check_range

FINETUNED_SUFFIX = "-ft"  # efficientnet_lite0 fine-tuned is the model efficientnet_lite0-ft
SCHEDULES = ("cosine", "step")
CLASS_WEIGHTS = ("none", "inverse_quarter")
WHOLE = ("head", "all")  # unfreeze: the head only (backbone frozen), or every block


@dataclasses.dataclass(frozen=True)
class FinetuneParams:
    models: tuple[str, ...] = ()
    unfreeze: str | int = "all"
    lr_backbone: float = 0.0001
    lr_head: float = 0.001
    schedule: str = "cosine"
    weight_decay: float = 0.01
    max_epochs: int = 3
    patience: int = 5
    batch_size: int = 32
    class_weights: str = "none"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        for name in self.models:
            if not MODEL_NAME.match(name) or name.endswith(FINETUNED_SUFFIX):
                raise UserError(f"params.yaml: finetune.models holds {name!r}; list backbone names (letters, digits "
                                f"and _.-), e.g. [efficientnet_lite0]; the fine-tuned model is named <name>-ft")
        duplicates = sorted({n for n in self.models if self.models.count(n) > 1})
        if duplicates:
            raise UserError(f"params.yaml: finetune.models lists {', '.join(duplicates)} more than once; list each once")
        if isinstance(self.unfreeze, int) and self.unfreeze < 1:
            raise UserError(f"params.yaml: finetune.unfreeze is {self.unfreeze}; use head, all, a number of last "
                            "blocks >= 1 or a block's name")
        check_range("finetune.lr_backbone", self.lr_backbone, 0.0, 10.0, low_open=True)
        check_range("finetune.lr_head", self.lr_head, 0.0, 10.0, low_open=True)
        check_choice("finetune.schedule", self.schedule, SCHEDULES)
        check_range("finetune.weight_decay", self.weight_decay, 0.0, 1.0)
        check_range("finetune.max_epochs", self.max_epochs, 1, 100_000)
        check_range("finetune.patience", self.patience, 1, 100_000)
        check_range("finetune.batch_size", self.batch_size, 2, 65536)  # batch norm needs 2 images per batch
        check_choice("finetune.class_weights", self.class_weights, CLASS_WEIGHTS)
        check_range("finetune.label_smoothing", self.label_smoothing, 0.0, 0.5)


def finetuned_name(backbone: str) -> str:
    return backbone + FINETUNED_SUFFIX


def finetuned_models(params: dict[str, Any]) -> list[str]:
    """The fine-tuned models' names (``<backbone>-ft``) of a params file's ``finetune.models``
    (none when the file has no ``finetune`` section)."""
    from plankton_transfer.params.core import section

    if params.get("finetune") is None:
        return []
    return [finetuned_name(m) for m in section(FinetuneParams, params, "finetune").models]
