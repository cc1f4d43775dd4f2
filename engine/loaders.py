"""DataLoaders for training and the search: built-in data by default, deterministic order, subsets, DDP shards.

The order of an epoch is a pure function of ``(seed, epoch)``: :class:`ShardedSampler` permutes the (sub)set of
indices with a generator seeded by both and hands each rank every ``world_size``-th index, so one process and N
processes visit the same images per epoch, and a resumed run the same images as an uninterrupted one. Augmentation
is seeded per ``(seed, epoch, index)`` by the dataset itself (``WiderFaceDetection.set_epoch``), so the number of
workers does not change the batches either. Call :func:`set_epoch` before iterating each epoch, and iterate inside
:func:`one_line_worker_errors` so that a bad image found by a worker process is reported like one found in the main
process.
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from engine.distributed import DistInfo
from utils.errors import FaceNASError


def resolve_data_root(data_root: str | Path | None, log: logging.Logger | None = None,
                      verbose: bool = True) -> Path:
    """``--data-root`` as a Path, or the built-in synthetic dataset (generated on first use) when it is None.

    Args:
        data_root: the user's folder, or None.
        log: where to say which data is used.
        verbose: let the dataset generator print its one-line notice.

    Raises:
        FaceNASError: when the folder does not exist.
    """
    if data_root is None:
        from data.synthetic import ensure_builtin_dataset

        root = ensure_builtin_dataset(verbose=verbose)
        if log is not None:
            log.info(f"data: built-in synthetic dataset at {root} (no --data-root given)")
        return root
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FaceNASError(f"--data-root {data_root}: folder not found (layout in docs/DATA.md)")
    if log is not None:
        log.info(f"data: {root}")
    return root


def split_holdout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into a training part and a held-out part, reproducibly.

    Args:
        n: dataset size.
        fraction: share of the images held out (0 < fraction < 1); at least one image on each side.
        seed: the split depends only on ``(n, fraction, seed)``.

    Returns:
        ``(train_indices, holdout_indices)``, each sorted.
    """
    if not 0.0 < fraction < 1.0:
        raise FaceNASError(f"held-out fraction must be between 0 and 1 (exclusive), got {fraction}")
    if n < 2:
        raise FaceNASError(f"cannot hold out part of a dataset of {n} image(s); need at least 2")
    held = min(max(1, round(n * fraction)), n - 1)
    order = np.random.default_rng([int(seed), 0x5E1D]).permutation(n)
    return sorted(order[held:].tolist()), sorted(order[:held].tolist())


class ShardedSampler(Sampler[int]):
    """Seeded (optionally shuffled) order over a subset of indices, sharded across ranks.

    Like ``DistributedSampler`` but over any index list. With ``drop_last`` the order is truncated to a multiple of
    ``world_size``, otherwise padded by repeating its start, so every rank gets the same number of items.

    Args:
        indices: dataset indices to draw from (default: all of ``range(n)`` via :meth:`from_size`).
        shuffle: permute every epoch.
        seed: base seed.
        rank: this process's rank.
        world_size: number of processes.
        drop_last: truncate rather than pad.
    """

    def __init__(self, indices: Sequence[int], shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.indices = [int(i) for i in indices]
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        total = len(self.indices)
        self.per_rank = total // world_size if drop_last else math.ceil(total / world_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch``."""
        self.epoch = int(epoch)

    def order(self) -> list[int]:
        """The full (all-rank) order of the current epoch."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            perm = torch.randperm(len(self.indices), generator=gen).tolist()
            order = [self.indices[i] for i in perm]
        else:
            order = list(self.indices)
        wanted = self.per_rank * self.world_size
        if len(order) < wanted and order:
            order += (order * math.ceil(wanted / len(order)))[: wanted - len(order)]
        return order[:wanted]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.rank::self.world_size])

    def __len__(self) -> int:
        return self.per_rank


def make_loader(dataset: Dataset, batch_size: int, dist_info: DistInfo | None = None, *, shuffle: bool = True,
                seed: int = 0, workers: int = 0, subset: Sequence[int] | None = None, drop_last: bool = True,
                pin_memory: bool | None = None) -> DataLoader:
    """A DataLoader with :class:`ShardedSampler` and ``detection_collate``.

    Args:
        dataset: e.g. ``WiderFaceDetection``.
        batch_size: images per batch *per process*.
        dist_info: the process's place in the job (default: one process on CPU).
        shuffle: permute every epoch.
        seed: order seed (combined with the epoch).
        workers: DataLoader worker processes (0 = load in the main process).
        subset: indices to draw from (e.g. from :func:`split_holdout`); default the whole dataset.
        drop_last: drop the last incomplete batch (training) or keep it (evaluation).
        pin_memory: default True when the device is CUDA.

    Returns:
        The loader; call :func:`set_epoch` on it before each epoch.

    Workers are not persistent: they are forked afresh each epoch so that they see the dataset's new epoch. Do not
    call ``cv2.setNumThreads`` inside a forked worker: when the parent has used OpenCV's thread pool, it hangs.
    """
    from data.widerface import detection_collate

    info = dist_info or DistInfo()
    indices = list(range(len(dataset))) if subset is None else list(subset)
    if not indices:
        raise FaceNASError("the data loader has no images (empty dataset or subset)")
    if batch_size < 1:
        raise FaceNASError(f"--batch-size must be >= 1, got {batch_size}")
    sampler = ShardedSampler(indices, shuffle=shuffle, seed=seed, rank=info.rank, world_size=info.world_size,
                             drop_last=False)
    if drop_last and len(sampler) < batch_size:
        raise FaceNASError(f"{len(indices)} images over {info.world_size} process(es) do not fill one batch of "
                           f"{batch_size}; lower --batch-size")
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=detection_collate, drop_last=drop_last,
                      pin_memory=info.device.type == "cuda" if pin_memory is None else pin_memory,
                      persistent_workers=False)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of the loader's sampler and dataset (order and augmentation stream)."""
    for obj in (loader.sampler, loader.dataset, getattr(loader.dataset, "dataset", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def worker_error_message(message: str) -> str | None:
    """The original one-line message inside an error that torch re-raised from a DataLoader worker, or ``None``.

    torch re-raises a worker's exception in the main process as the same type, with a message of several lines:
    ``Caught X in DataLoader worker process N.``, then the worker's traceback, whose last line is
    ``module.X: original message``.
    """
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if len(lines) < 2 or not lines[0].startswith("Caught ") or "DataLoader worker" not in lines[0]:
        return None
    _, sep, original = lines[-1].partition(": ")
    return original.strip() if sep and original.strip() else None


@contextlib.contextmanager
def one_line_worker_errors() -> Iterator[None]:
    """Turn a :class:`FaceNASError` raised in a DataLoader worker back into its one-line message.

    Wrap the loop that consumes batches. Without it, a corrupt image read by a worker reaches the user as the worker's
    whole traceback; with it, as the same ``PATH: not a readable image ...`` line as with ``--workers 0``. Other
    exceptions pass unchanged (they are bugs and keep their traceback).
    """
    try:
        yield
    except FaceNASError as exc:
        original = worker_error_message(str(exc))
        if original is None:
            raise
        raise FaceNASError(original) from None
