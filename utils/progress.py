"""The one progress display of the project: a tqdm bar where tqdm is installed, else a plain counter on stderr
(redrawn in place on a terminal, printed about 20 times in a log). Standard library only: ``profile_latency.py``
embeds it, and devices may have nothing but PyTorch."""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class Progress:
    """A progress bar for ``total`` steps.

    Args:
        total: number of steps.
        desc: label in front of the bar.
        unit: what a step is ("block", "step", "image").
        enabled: ``False`` shows nothing (but still counts).
        leave: keep the finished bar on screen (tqdm only).
    """

    def __init__(self, total: int, desc: str = "", unit: str = "it", enabled: bool = True, leave: bool = False):
        self.total, self.desc, self.unit, self.enabled = int(total), desc, unit, enabled
        self.done, self.start, self.text = 0, time.time(), ""
        self.bar: Any = None
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if enabled and tqdm is not None:
            self.bar = tqdm(total=self.total, desc=desc or None, unit=unit, leave=leave, dynamic_ncols=True)
        self.tty = sys.stderr.isatty()

    def update(self, steps: int = 1, text: str | None = None) -> None:
        """Advance by ``steps``; ``text`` replaces the note shown after the bar."""
        self.done += steps
        if text is not None:
            self.text = text
        if not self.enabled:
            return
        if self.bar is not None:
            if text is not None:
                self.bar.set_postfix_str(text[:200], refresh=False)
            self.bar.update(steps)
            return
        elapsed = time.time() - self.start
        eta = elapsed / max(self.done, 1) * max(self.total - self.done, 0)
        line = f"{self.desc + ' ' if self.desc else ''}[{self.done}/{self.total}] {elapsed:6.0f}s eta {eta:5.0f}s  " \
               f"{self.text}"
        if self.tty:
            print("\r" + line[:150].ljust(150), end="", file=sys.stderr, flush=True)
        elif self.done >= self.total or self.done % max(1, self.total // 20) == 0:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.tty:
            print(file=sys.stderr)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
          enabled: bool = True) -> Iterator[T]:
    """Iterate over ``items`` with a :class:`Progress` bar (``total`` defaults to ``len(items)``, else unknown)."""
    if total is None:
        total = len(items) if hasattr(items, "__len__") else 0  # type: ignore[arg-type]
    with Progress(total, desc, unit, enabled) as bar:
        for item in items:
            yield item
            bar.update(1)
