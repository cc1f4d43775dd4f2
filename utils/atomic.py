"""Atomic file writes: write a temporary file next to the target, then rename it into place.

A crash, Ctrl-C or ``kill -9`` in the middle of a write leaves the previous file intact. The temporary file is
``.NAME.XXXXXXXX.tmp`` in the target's folder; a killed process cannot delete it, so run folders call
:func:`remove_stale_temporaries` when they start. The final file gets the mode an ordinary ``open()`` would give it
(``0666`` minus the umask), or keeps the mode of the file it replaces. Standard library only, so that
``profile_latency.py`` can embed it.
"""
from __future__ import annotations

import json
import os
import re
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

#: Test hook: ``NAME`` or ``NAME:N`` pauses this process just before the N-th (default first) rename onto a file
#: called NAME, so that a test can ``kill -9`` it inside a write. Unset (always, outside tests): no effect.
PAUSE_ENV = "FACENAS_PAUSE_BEFORE_RENAME"
_renames_seen: dict[str, int] = {}
# mkstemp names: our prefix ".NAME.", eight characters of tempfile's alphabet, our suffix ".tmp"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def current_umask() -> int:
    """The process's umask (read from /proc where possible, so the mask is never changed, even briefly)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _final_mode(path: Path) -> int:
    """The mode of the file being replaced, else what ``open(path, "w")`` would create."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def _pause_before_rename(tmp: str, path: Path) -> None:
    """The :data:`PAUSE_ENV` test hook: announce on stderr, then wait to be killed."""
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != path.name:
        return
    _renames_seen[name] = _renames_seen.get(name, 0) + 1
    if _renames_seen[name] != int(nth or 1):
        return
    sys.stderr.write(f"{PAUSE_ENV}: paused before renaming {tmp} to {path}\n")
    sys.stderr.flush()
    while True:
        time.sleep(60)


def atomic_write(path: str | os.PathLike, writer: Callable[[IO[bytes]], None]) -> None:
    """Call ``writer`` on a temporary binary file in the target's folder, then rename it over ``path``.

    The file is flushed to disk before the rename. For tests, the environment variable ``FACENAS_PAUSE_BEFORE_RENAME
    =NAME[:N]`` makes the process stop just before the N-th rename onto a file named NAME (see :data:`PAUSE_ENV`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _final_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            writer(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600
        _pause_before_rename(tmp, path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporary files that killed atomic writes left in ``folder`` (``.NAME.XXXXXXXX.tmp``).

    Call it when a run starts, before it writes anything, and only on folders no other process writes into at the
    same time (a run folder, or with ``names`` the temporaries of one table).

    Args:
        folder: where to look (not recursive); a missing folder holds nothing.
        names: only temporaries of these target file names (default: every one of ours).

    Returns:
        The files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    wanted = None if names is None else set(names)
    removed = []
    for entry in folder.iterdir():
        match = _TEMPORARY.match(entry.name)
        if match is None or (wanted is not None and match.group("name") not in wanted) or not entry.is_file():
            continue
        try:
            entry.unlink()
        except FileNotFoundError:
            continue
        removed.append(entry)
    return removed
