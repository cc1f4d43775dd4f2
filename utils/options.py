"""One validation layer for the command lines: range-checked number types, a parser whose errors are one line,
and the checks every output path gets before any work starts.

* ``type=int_range(1)``, ``type=float_range(0, 1, low_open=True)``, ``type=PROBABILITY``...: argparse types that
  reject what is not a number, not finite (``nan``, ``inf``) or out of range, with a message that states the range.
  The range is also appended to the option's ``--help`` line by :class:`RangeHelpFormatter`.
* :class:`OptionParser`: an ``ArgumentParser`` whose errors raise :class:`~utils.errors.FaceNASError`, so a bad
  option is one ``error: ...`` line with exit status 2 (through ``run_cli``) and a ``FaceNASError`` for callers of
  ``main(argv)``; ``--help`` is unchanged.
* :func:`check_output_file` / :func:`check_output_dir`: a path under a regular file, a folder where a file is wanted
  (or the reverse) or an unwritable folder is reported before anything is computed or written.

Standard library only, Python 3.8 syntax: ``profile_latency.py`` embeds it (see ``tools/build_profiler.py``).
"""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from utils.errors import FaceNASError


def _format_number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class NumberRange:
    """An argparse ``type``: parse an int or a float and check that it lies in a range.

    Build it with :func:`int_range` or :func:`float_range`. ``text`` describes the accepted values ("an integer
    >= 1", "a number > 0 and <= 1"); it appears in error messages and in ``--help``.
    """

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False, finite: bool = True, also: Sequence[float] = ()) -> None:
        if kind not in (int, float):
            raise TypeError(f"a NumberRange is of int or float, not {kind!r}")
        self.kind, self.low, self.high = kind, low, high
        self.low_open, self.high_open, self.finite, self.also = low_open, high_open, finite, tuple(also)
        self.__name__ = "integer" if kind is int else "number"  # argparse names the type in some messages

    @property
    def text(self) -> str:
        """What the option accepts, in words."""
        noun = "an integer" if self.kind is int else ("a finite number" if self.finite else "a number")
        low = None if self.low is None else (">" if self.low_open else ">=") + " " + _format_number(self.low)
        high = None if self.high is None else ("<" if self.high_open else "<=") + " " + _format_number(self.high)
        if low and high and not self.low_open and not self.high_open:
            words = f"{noun} from {_format_number(self.low)} to {_format_number(self.high)}"
        elif low and high:
            words = f"{noun} {low} and {high}"
        else:
            words = f"{noun} {low or high}" if (low or high) else noun
        if self.also:
            words = " or ".join(_format_number(v) for v in self.also) + " or " + words
        return words

    def accepts(self, value: float) -> bool:
        """Whether an already parsed value lies in the range."""
        if value in self.also:
            return True
        if self.kind is float and self.finite and not math.isfinite(value):
            return False
        if math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def __call__(self, text: str) -> Any:
        try:
            value = self.kind(text.strip()) if isinstance(text, str) else self.kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {self.text}, got {text!r}") from None
        if not self.accepts(value):
            raise argparse.ArgumentTypeError(f"expected {self.text}, got {text!r}")
        return value

    def __repr__(self) -> str:
        return f"NumberRange({self.text})"


def int_range(low: int | None = None, high: int | None = None, also: Sequence[int] = ()) -> NumberRange:
    """An integer type for argparse with ``low <= value <= high`` (either bound optional).

    Args:
        low: smallest accepted value (None: no lower bound).
        high: largest accepted value (None: no upper bound).
        also: single values accepted outside the range (e.g. ``0`` meaning "off").
    """
    return NumberRange(int, low, high, also=also)


def float_range(low: float | None = None, high: float | None = None, low_open: bool = False,
                high_open: bool = False, finite: bool = True, also: Sequence[float] = ()) -> NumberRange:
    """A float type for argparse: ``nan`` is always refused, ``inf`` unless ``finite=False``.

    Args:
        low, high: bounds (None: unbounded on that side).
        low_open, high_open: exclude the bound itself (``low_open=True`` with ``low=0`` means "> 0").
        finite: refuse ``inf`` and ``-inf`` (default).
        also: single values accepted outside the range.
    """
    return NumberRange(float, low, high, low_open, high_open, finite, also)


#: Common ranges.
PROBABILITY = float_range(0.0, 1.0)
POSITIVE_FLOAT = float_range(0.0, low_open=True)
NON_NEGATIVE_FLOAT = float_range(0.0)
POSITIVE_INT = int_range(1)
NON_NEGATIVE_INT = int_range(0)
#: Seeds must fit every generator they feed (NumPy's legacy seeding takes < 2**32).
SEED = int_range(0, 2 ** 32 - 1)


class RangeHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the description's line breaks and append each range-checked option's range to its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if isinstance(action.type, NumberRange) and text != argparse.SUPPRESS:
            text += f" (range: {action.type.text})".replace("%", "%%")
        return text


class OptionParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are a one-line :class:`FaceNASError` ("argument --x: expected ...").

    Through ``run_cli`` that is ``error: ...`` on stderr with exit status 2, like every other bad input; callers
    of a script's ``main(argv)`` get the exception. ``--help`` prints and exits as usual. The default
    ``formatter_class`` is :class:`RangeHelpFormatter`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", RangeHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise FaceNASError(f"{message} (see {self.prog} --help)")


def _first_existing(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists (every step checked for being a folder by callers)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _check_parent_chain(path: Path, what: str) -> Path:
    """Refuse a path that lies under a regular file or an unwritable folder; returns the folder that must exist."""
    parent = path.parent if str(path.parent) else Path(".")
    existing = _first_existing(parent)
    if existing.exists() and not existing.is_dir():
        raise FaceNASError(f"{path}: {what} cannot be created there: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FaceNASError(f"{path}: {what} cannot be written: no write permission in {existing}")
    return existing


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """Check, before any work, that ``path`` can receive a file.

    Args:
        path: the output file (it may exist; it is then replaced).
        what: how the path was given, for messages (``"--json"``, ``"the latency table"``).

    Returns:
        ``path`` as a Path.

    Raises:
        FaceNASError: the path is a folder, lies under a regular file, or its folder is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise FaceNASError(f"{path}: {what} names a folder; give a file path")
    _check_parent_chain(path, what)
    return path


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
    """Check, before any work, that ``path`` is (or can become) a writable folder.

    Args:
        path: the output folder (it may exist).
        what: how the path was given, for messages (``"--out-dir"``).

    Returns:
        ``path`` as a Path.

    Raises:
        FaceNASError: the path is a regular file, lies under one, or cannot be written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FaceNASError(f"{path}: {what} names a file; give a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise FaceNASError(f"{path}: {what} cannot be written: no write permission")
        return path
    _check_parent_chain(path, what)
    return path
