"""The Hydra commands' error rule: a bad value ends in one `error: ...` line naming the cause, not a deep traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from mobilesam.cli import error_line

F = TypeVar("F", bound=Callable[..., Any])


def root_cause(e: BaseException) -> BaseException:
    """The error under Hydra's instantiation wrapper (which adds the target's name around the real message)."""
    while type(e).__name__ == "InstantiationException" and e.__cause__ is not None:
        e = e.__cause__
    return e


def one_line_errors(fn: F) -> F:
    """Wraps a `@hydra.main` function: any error is printed as one `error: ...` line on stderr and exits 1.
    `HYDRA_FULL_ERROR=1` shows the traceback instead, as Hydra itself does."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"{error_line(root_cause(e))} (HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
            sys.exit(1)

    return wrapped  # type: ignore[return-value]
