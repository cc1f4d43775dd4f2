"""Command lines in timm's style: argument groups, plus a YAML config file that the command line overrides.

``--config FILE`` names a YAML mapping whose keys are option names (``batch-size`` or ``batch_size``). Its values
are turned into command-line arguments and parsed *before* the real command line, so argparse checks types and
choices of both and anything typed on the command line wins. Unknown keys, wrong types and bad values are reported
as ``FILE:LINE: ...`` (a :class:`~utils.errors.FaceNASError`). :func:`write_config` saves the resolved settings of a
run in the same format, so ``--config runs/x/config.yaml`` repeats it.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from utils.atomic import atomic_write_text
from utils.errors import FaceNASError
from utils.options import OptionParser, RangeHelpFormatter


class _RaisingParser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of printing usage and exiting (to attribute errors to the file)."""

    def error(self, message: str):  # type: ignore[override]
        raise ValueError(message)


class HelpFormatter(RangeHelpFormatter):
    """Keep the description's line breaks; option help strings state their defaults themselves, and range-checked
    options (:mod:`utils.options`) get their range appended."""


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Map every long option's destination (``batch_size``) to its action."""
    out = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public listing
        if action.option_strings and action.dest not in ("help", "config"):
            out[action.dest] = action
    return out


def _option_string(action: argparse.Action) -> str:
    return next(s for s in action.option_strings if s.startswith("--"))


def _value_argv(action: argparse.Action, value: Any, where: str) -> list[str]:
    """Command-line arguments equivalent to ``option: value``."""
    opt = _option_string(action)
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise FaceNASError(f"{where}: '{action.dest}' takes true or false, not {value!r}")
        return [opt] if value else [f"--no-{opt[2:]}"]
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):  # noqa: SLF001
        if not isinstance(value, bool):
            raise FaceNASError(f"{where}: '{action.dest}' takes true or false, not {value!r}")
        return [opt] if value == isinstance(action, argparse._StoreTrueAction) else []  # noqa: SLF001
    if value is None:
        if action.nargs == "?":
            return [opt]
        raise FaceNASError(f"{where}: '{action.dest}' needs a value")
    if isinstance(value, list | tuple):
        if action.nargs in (None, "?"):
            raise FaceNASError(f"{where}: '{action.dest}' takes one value, not a list")
        return [opt, *(str(v) for v in value)] if value else ([opt] if action.nargs == "*" else [])
    if isinstance(value, dict):
        raise FaceNASError(f"{where}: '{action.dest}' takes a value, not a mapping")
    return [opt, str(value).lower() if isinstance(value, bool) else str(value)]


def config_to_argv(path: str | Path, parser: argparse.ArgumentParser) -> list[str]:
    """Translate a YAML config into command-line arguments for ``parser`` (checked against it).

    Raises:
        FaceNASError: missing or unreadable file, not a mapping, unknown option, or a value the option rejects;
            messages name ``FILE:LINE``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FaceNASError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FaceNASError(f"{path}: cannot read the config file ({exc})") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise FaceNASError(f"{path}{line}: not valid YAML ({problem})") from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise FaceNASError(f"{path}: a config must be a mapping of option: value, not a {type(data).__name__}")
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            lines[str(key_node.value)] = key_node.start_mark.line + 1
    actions = _actions(parser)
    argv: list[str] = []
    for key, value in data.items():
        where = f"{path}:{lines.get(str(key), '?')}"
        dest = str(key).replace("-", "_")
        if dest not in actions:
            known = ", ".join(sorted(a.replace("_", "-") for a in actions))
            raise FaceNASError(f"{where}: unknown option '{key}'; known options: {known}")
        piece = _value_argv(actions[dest], value, where)
        # Parse this option alone to attribute type / choice errors to its line.
        probe = _RaisingParser(add_help=False)
        probe._add_container_actions(parser)  # noqa: SLF001 - copy every option with its checks
        for action in probe._actions:  # noqa: SLF001
            action.required = False
        try:
            probe.parse_args(piece)
        except ValueError as exc:
            raise FaceNASError(f"{where}: {exc}") from None
        argv += piece
    return argv


def parse_args(parser: argparse.ArgumentParser,
               argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, set[str]]:
    """Parse ``argv`` with ``--config FILE`` support (the parser must define ``--config``).

    The config's values come first, the command line after, so the command line overrides the file.

    Returns:
        ``(args, explicit)``: the namespace, and the destinations the config file or the command line set (the
        others hold their defaults), so scripts can layer presets and resumed settings under what the user gave.
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = OptionParser(prog=parser.prog, add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    extra = config_to_argv(known.config, parser) if known.config else []
    args = parser.parse_args(extra + argv)
    args.config = known.config
    probe = OptionParser(prog=parser.prog, add_help=False)
    probe._add_container_actions(parser)  # noqa: SLF001 - the same options, without their defaults
    for action in probe._actions:  # noqa: SLF001
        action.default = argparse.SUPPRESS
        action.required = False
    explicit = set(vars(probe.parse_args(extra + argv))) - {"config"}
    return args, explicit


def write_config(path: str | Path, args: argparse.Namespace | dict[str, Any],
                 skip: Sequence[str] = ("config", "resume")) -> None:
    """Write resolved settings as a YAML config (atomically) that :func:`parse_args` reads back."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    plain = {}
    for key, value in values.items():
        if key in skip or value is None:
            continue
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        plain[key.replace("_", "-")] = value
    atomic_write_text(path, yaml.safe_dump(plain, sort_keys=False))
