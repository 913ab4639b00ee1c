"""What every command of ``drizzle-ml`` shares: its one-line errors, argument types, outputs that are not inputs."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def positive_int(text: str, what: str = "a positive integer") -> int:
    """An argparse type: ``text`` as an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


class CLIError(Exception):
    """A one-line error for the user; the command exits with status 2."""


def check_output_paths(outputs: dict[str, str | None], inputs: dict[str, str | None],
                   watched: dict[str, str | None] | None = None) -> None:
    """An output that is an input (or another output), or that cannot be written, is refused before any work."""
    from drizzle_ml.files import check_outputs, check_writable

    try:
        check_outputs(outputs, inputs, watched)
        for what, path in outputs.items():
            if path:
                check_writable(path, what)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def save_result(what: str, path: str | None, write: Callable[[str], None], problems: list[str]) -> str | None:
    """``write(path)`` if a path was given; where it was written. A failure (a full disk) keeps a
    copy in the temporary directory and adds the one-line story to ``problems``."""
    from drizzle_ml.files import write_or_keep

    if not path:
        return None
    try:
        where, problem = write_or_keep(write, path, what)
    except OSError as exc:
        problems.append(str(exc))
        return None
    if problem:
        problems.append(problem)
    return where
