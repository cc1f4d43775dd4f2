"""Checkpoints of training and search runs: atomic save, checked loading, rebuilding the detector, resume.

Both kinds are ``torch.save`` dicts that ``torch.load(weights_only=True)`` can read (plain containers, numbers,
strings and tensors only: no code runs from a checkpoint file), written by :func:`write_checkpoint` and read by
:func:`read_checkpoint`, which checks the ``format`` field. The search's payload is described in
:mod:`nas.searcher`; a training checkpoint holds::

    format        "facenas-retinaface/1"
    model         the model as given (registry name, thesis spelling or arch file) for display
    model_name    timm registry name, or None for an architecture given as data
    arch          the architecture dict (FaceNAS backbones), so the checkpoint rebuilds without the arch file
    fpn_channels  FPN / SSH width
    epoch         last completed epoch (0-based); resume starts at epoch + 1
    state_dict    the detector's weights (unwrapped from DDP)
    optimizer, scheduler, scaler   their state dicts (or None)
    rng           python / numpy / torch / cuda generator states
    args          the run's settings (for the log and for resume checks)
    history       per-epoch mean losses so far (for the loss curve)
    extra         anything else the caller adds (e.g. search state)
"""
from __future__ import annotations

import copy
import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.atomic import atomic_write
from utils.errors import FaceNASError

FORMAT = "facenas-retinaface/1"


def write_checkpoint(paths: str | Path | list[str | Path], payload: dict[str, Any]) -> None:
    """Serialise ``payload`` once and write it atomically (temporary file + rename) to every path in ``paths``.

    The files are written in the order given. Put ``last.pth`` *last*: a kill between two writes then leaves the extra
    files (``warmup.pth``, ``epoch_NNNN.pth``) complete and ``last.pth`` one epoch older, and resuming from it redoes
    that epoch and writes the same files again; the other order would lose the extra files for good.
    """
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    for path in paths if isinstance(paths, list) else [paths]:
        atomic_write(path, lambda handle: handle.write(buffer.getbuffer()))


def read_checkpoint(path: str | Path, expected_format: str, kind: str, what: str, hint: str,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check its ``format``.

    Args:
        path: the file.
        expected_format: the ``format`` field it must have.
        kind: the kind of checkpoint expected ("detector", "search").
        what: the file's name in messages ("checkpoint", "search checkpoint").
        hint: what to do when it is of another kind.
        map_location: where tensors go.

    Raises:
        FaceNASError: missing, unreadable or of another format (one line naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FaceNASError(f"{path}: {what} not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling / zip error means the same thing to the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FaceNASError(f"{path}: not a readable {what} ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != expected_format:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise FaceNASError(f"{path}: not a FaceNAS {kind} checkpoint (format {found!r}, expected {expected_format!r}); "
                           f"{hint}")
    return ckpt


def model_spec(model: str | Path | Any) -> dict[str, Any]:
    """How to rebuild a detector's backbone: ``{"model", "model_name", "arch"}`` for a checkpoint.

    Args:
        model: what was given to ``models.build_detector`` (name, thesis spelling, arch path or ``models.Arch``).
    """
    import models

    if isinstance(model, models.Arch):
        return {"model": model.name or "arch", "model_name": None, "arch": model.to_dict()}
    text = str(model)
    if text.endswith(".json"):
        arch = models.Arch.load(text)
        return {"model": text, "model_name": None, "arch": arch.to_dict()}
    name = models.resolve_model_name(text)
    arch = None
    if name.startswith("facenas_") and name != "facenas_arch":
        try:
            arch = models.published_arch(name).to_dict()
        except FaceNASError:
            arch = None
    return {"model": text, "model_name": name, "arch": arch}


def build_from_spec(spec: dict[str, Any], fpn_channels: int | None, source: str = "checkpoint") -> nn.Module:
    """Rebuild the detector described by :func:`model_spec` output (architecture data first, then the name)."""
    import models

    if spec.get("arch") is not None:
        arch = models.Arch.from_dict(copy.deepcopy(spec["arch"]), f"{source} (arch)")
        return models.build_detector(arch, fpn_channels=fpn_channels)
    if spec.get("model_name"):
        return models.build_detector(spec["model_name"], fpn_channels=fpn_channels)
    raise FaceNASError(f"{source}: holds neither an architecture nor a model name; not a FaceNAS checkpoint")


def rng_state() -> dict[str, Any]:
    """Every global generator's state, in forms ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys, np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by :func:`rng_state` (CUDA only when the device count matches)."""
    random.setstate(_as_tuple(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, np.int64).astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _as_tuple(value: Any) -> Any:
    # random.setstate needs tuples all the way down; some loaders hand back lists.
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(v) for v in value)
    return value


def _plain(value: Any) -> Any:
    """Convert settings (argparse values, Paths, tuples) to types that load with ``weights_only=True``."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def save_checkpoint(path: str | Path | list[str | Path], *, model: nn.Module, spec: dict[str, Any],
                    fpn_channels: int, epoch: int, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, scaler: torch.amp.GradScaler | None = None,
                    args: dict[str, Any] | None = None, history: list[dict[str, float]] | None = None,
                    extra: dict[str, Any] | None = None) -> None:
    """Write a checkpoint atomically (temporary file + rename: a crash never leaves a half-written file).

    Args:
        path: target file, or several written in order with the same bytes (see :func:`write_checkpoint`).
        model: the detector (DDP / compiled wrappers are unwrapped).
        spec: :func:`model_spec` of the model.
        fpn_channels: the detector's FPN width.
        epoch: last completed epoch (0-based).
        optimizer: its state is saved when given.
        scheduler: any object with ``state_dict()``.
        scaler: the AMP gradient scaler.
        args: the run's settings.
        history: per-epoch loss records.
        extra: anything else (plain containers and tensors).
    """
    from engine.distributed import unwrap

    payload = {
        "format": FORMAT,
        **spec,
        "fpn_channels": int(fpn_channels),
        "epoch": int(epoch),
        "state_dict": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_state(),
        "args": _plain(args or {}),
        "history": _plain(history or []),
        "extra": extra or {},
        "torch_version": str(torch.__version__),
    }
    write_checkpoint(path, payload)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint (``weights_only`` loading: no code runs from the file).

    Raises:
        FaceNASError: missing, unreadable or not a FaceNAS detector checkpoint.
    """
    return read_checkpoint(path, FORMAT, "detector", "checkpoint", "train one with train.py", map_location)


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the detector of a checkpoint, load and check its weights, and put it in eval mode on ``device``.

    Returns:
        ``(detector, checkpoint dict)``.

    Raises:
        FaceNASError: bad file, or weights that do not fit the architecture (names the file).
    """
    import models

    ckpt = load_checkpoint(path)
    detector = build_from_spec(ckpt, ckpt.get("fpn_channels"), str(path))
    models.check_state_dict(detector, ckpt["state_dict"], source=str(path))
    detector.load_state_dict(ckpt["state_dict"], strict=True)
    return detector.to(device).eval(), ckpt


def resume_training(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, scaler: torch.amp.GradScaler | None = None,
                    spec: dict[str, Any] | None = None, restore_rng: bool = True) -> dict[str, Any]:
    """Load a checkpoint into a freshly built training set-up.

    Args:
        path: the checkpoint.
        model: the detector (or its DDP wrapper) built with the same architecture.
        optimizer, scheduler, scaler: restored when given and saved.
        spec: the run's :func:`model_spec`; a different architecture is an error naming both.
        restore_rng: restore the global generators.

    Returns:
        The checkpoint dict; training continues at ``checkpoint["epoch"] + 1``.
    """
    import models
    from engine.distributed import unwrap

    ckpt = load_checkpoint(path)
    if spec is not None and (spec.get("arch") != ckpt.get("arch") or spec.get("model_name") != ckpt.get("model_name")):
        raise FaceNASError(f"{path}: was trained with model {ckpt.get('model')!r}, not {spec.get('model')!r}; "
                           "resume with the same --model (or omit it)")
    target = unwrap(model)
    models.check_state_dict(target, ckpt["state_dict"], source=str(path))
    target.load_state_dict(ckpt["state_dict"], strict=True)
    if optimizer is not None and ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and scaler.is_enabled() and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    if restore_rng and ckpt.get("rng"):
        set_rng_state(ckpt["rng"])
    return ckpt
