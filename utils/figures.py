"""matplotlib for the project's plots: a headless backend, and PNGs written atomically."""
from __future__ import annotations

import io
import os
from typing import Any

from utils.atomic import atomic_write


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend (no display on servers, devices or CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100, tight: bool = False) -> None:
    """Write ``fig`` as a PNG to ``path`` (temporary file + rename, so a crash never leaves half an image)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    pyplot().close(fig)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
