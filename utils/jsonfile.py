"""Reading a JSON file with one-line errors that name the file (and the line of a syntax error).

Standard library only: ``profile_latency.py`` embeds it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from utils.errors import FaceNASError


def read_json(path: str | os.PathLike, what: str, missing_hint: str = "") -> tuple[Any, str]:
    """Parse ``path`` and return ``(data, text)``; the raw text lets callers point later errors at a line.

    Args:
        path: the file.
        what: what the file is, for messages ("latency table", "architecture file", ...).
        missing_hint: what to do when the file does not exist (appended after "not found; ").

    Raises:
        FaceNASError: missing, unreadable, not UTF-8 or not valid JSON (``FILE:LINE: ...``).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FaceNASError(f"{path}: {what} not found" + (f"; {missing_hint}" if missing_hint else "")) from None
    except OSError as exc:
        raise FaceNASError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise FaceNASError(f"{path}: not a text file; a {what} is UTF-8 JSON") from None
    try:
        return json.loads(text), text
    except json.JSONDecodeError as exc:
        raise FaceNASError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); repair the file or write a new "
                           f"{what}") from None
