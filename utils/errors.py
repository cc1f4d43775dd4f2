"""One exception type for mistakes a user can fix, and the CLI wrapper that prints it on one line.

This module depends on the standard library only: ``profile_latency.py`` embeds it (see ``tools/build_profiler.py``).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


class FaceNASError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback.

    Messages name the file (and line) involved, say what is wrong and, where possible, what to do.
    """


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on one line to stderr and exit with status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's ``main`` and turn a ``FaceNASError`` into a one-line message and exit status 2."""
    try:
        main()
    except FaceNASError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
