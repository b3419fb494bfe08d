"""``split``: fractions of each class in train, val and test, and what must stay together."""
from __future__ import annotations

import dataclasses
import re

from plankton_transfer.errors import UserError
from plankton_transfer.params.core import check_range

SPLIT_GROUP_MODES = ("none", "near_duplicates")  # or a regular expression with a capture group


@dataclasses.dataclass(frozen=True)
class SplitParams:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    group: str = "none"
    near_duplicate_distance: int = 4  # hash candidates: at most this many of 64 bits differ
    near_duplicate_similarity: float = 0.99  # confirmed: pixel correlation of the two thumbnails at least this

    def __post_init__(self) -> None:
        if min(self.train, self.val, self.test) <= 0 or abs(self.train + self.val + self.test - 1) > 1e-6:
            raise UserError(
                f"params.yaml: split fractions must be > 0 and sum to 1 (got train={self.train}, "
                f"val={self.val}, test={self.test})"
            )
        check_range("split.near_duplicate_distance", self.near_duplicate_distance, 0, 32)
        check_range("split.near_duplicate_similarity", self.near_duplicate_similarity, 0.5, 1.0)
        if self.group not in SPLIT_GROUP_MODES:
            check_group_pattern(self.group)


def check_group_pattern(pattern: str) -> re.Pattern:
    """``split.group`` as a regular expression whose first capture group is the group id."""
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise UserError(f"params.yaml: split.group {pattern!r} is not a regular expression ({err}); use none, "
                        "near_duplicates or a pattern such as '(D\\d{8}T\\d{6}_IFCB\\d+)'") from None
    if compiled.groups < 1:
        raise UserError(f"params.yaml: split.group {pattern!r} has no capture group; put the group id in "
                        "parentheses, e.g. '^([^_]+)_' for the part of the file name before the first _")
    return compiled
