"""Inherited accuracy: a fixed path of a trained supernet, its BatchNorm recalibrated, scored on the val set.

This is how weight sharing ranks networks without training them (the quantity the ranking benchmark compares with
stand-alone AP). The checkpoint's weights are loaded once; every path gets fresh BatchNorm statistics from the same
training batches (:mod:`nas.recalibrate`) and is evaluated with the official WIDER FACE protocol.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.search_space import SearchSpace

SETTINGS = ("easy", "medium", "hard", "mean")


class InheritedScorer:
    """Scores fixed paths of one search checkpoint.

    Args:
        checkpoint: a ``search.py`` checkpoint (``last.pth``, ``warmup.pth``, ``epoch_NNNN.pth``).
        space: its search space.
        data_root: dataset root (None: the built-in dataset).
        bn_batches: training batches that recompute BatchNorm statistics per path (0 = keep the shared ones).
        seed: order of those batches (the same batches for every path).
    """

    def __init__(self, checkpoint: str | Path, space: SearchSpace, data_root: str | None = None,
                 bn_batches: int = 20, seed: int = 0):
        from data.augment import TrainTransform
        from data.widerface import WiderFaceDetection
        from engine.checkpoint import read_checkpoint
        from engine.distributed import DistInfo
        from engine.loaders import make_loader, resolve_data_root
        from models.retinaface import RetinaFace
        from nas.supernet import SuperNet

        state = read_checkpoint(checkpoint, "facenas-search/1", "search", "search checkpoint",
                                "a search writes OUT/last.pth and OUT/warmup.pth")
        self.net = SuperNet(space)
        self.detector = RetinaFace(self.net, self.net.channels, state["settings"].get("fpn_channels"))
        self.weights = state["detector"]
        self.root = resolve_data_root(data_root, verbose=False)
        size = int(state["settings"]["img_size"])
        self.loader = make_loader(WiderFaceDetection(self.root, "train", TrainTransform(size), seed=seed),
                                  int(state["settings"]["batch_size"]), DistInfo(), shuffle=True, seed=seed,
                                  workers=0)
        self.bn_batches = bn_batches

    def score(self, choices: list[int], pred_dir: str | Path) -> dict[str, float]:
        """AP (``easy``, ``medium``, ``hard``, ``mean``, fractions) of the network ``choices`` of the space."""
        from engine.inference import EvalSettings, evaluate_detector
        from nas.recalibrate import recalibrate_batchnorm

        self.detector.load_state_dict(self.weights)
        self.net.set_paths([(c, (c,)) for c in choices], "weights")
        if self.bn_batches:
            recalibrate_batchnorm(self.detector, self.loader, self.bn_batches)
        with torch.inference_mode():
            result: dict[str, Any] = evaluate_detector(self.detector.eval(), self.root, pred_dir, EvalSettings(),
                                                       progress=False)
        return {k: float(result[k]) for k in SETTINGS}
