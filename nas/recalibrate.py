"""BatchNorm recalibration of one fixed path of the supernet before it is scored (Guo et al., SPOS; OFA).

Every candidate block has its own BatchNorm layers, but their running statistics were gathered while the layers
around them changed every step, and the FPN and heads saw every path: statistics that belong to no single network.
Scoring a path with them under-rates it by an amount that differs from path to path. Recalibration resets the
statistics and recomputes them as a plain average (``momentum=None``) over a few training batches run through the
path in train mode, without gradients. The weights are not touched; the momentum of each layer is restored.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable, max_batches: int,
                          device: torch.device | str = "cpu") -> int:
    """Recompute the running statistics of every BatchNorm of ``model`` on up to ``max_batches`` batches.

    Args:
        model: the detector with its path already set (train/eval mode is restored afterwards).
        batches: ``(images, targets)`` pairs or image tensors.
        max_batches: how many batches to average over (>= 1).
        device: where the images go.

    Returns:
        The number of batches used.
    """
    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    was_training = model.training
    model.train()
    used = 0
    try:
        for batch in batches:
            if used >= max_batches:
                break
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(images.to(device))
            used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return used
