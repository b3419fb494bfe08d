"""The one exception type for problems a user can fix, and how commands report it."""
from __future__ import annotations

import sys
from typing import Any, Callable


class UserError(Exception):
    """A problem the user can fix (bad params, bad files, missing weights).

    Stages and commands print it as one line, without a traceback, and exit with status 2.
    """


def run_cli(main: Callable[[list[str] | None], Any]) -> None:
    """Run a stage's or command's ``main`` and turn a :class:`UserError` into a one-line message."""
    try:
        main(None)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
