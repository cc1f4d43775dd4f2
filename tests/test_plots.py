"""Plots a person reads without the thesis: search.png, the latency-table figures and the WIDER FACE PR curves.

Each test catches the matplotlib figure before it is written and checks what a reader needs: a title, units, the
target, the warm-up, whole-epoch ticks, legends that sit outside the data and say what the codes mean, one curve per
compared model.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from utils.errors import FaceNASError

ROOT = Path(__file__).resolve().parents[1]


class Caught(list):
    """Figures caught so far; ``patch(module)`` catches that module's saves too."""

    patch = None


@pytest.fixture
def figures(monkeypatch) -> Caught:
    """The figures the code under test saves (drawn, so that text extents are known), instead of PNG files."""
    caught = Caught()

    def keep(fig, path, dpi=100, tight=False):
        fig.canvas.draw()
        caught.append(fig)
        Path(path).write_bytes(b"\x89PNG")  # the caller's file still appears

    import data.wider_eval
    import nas.searcher

    for module in (nas.searcher, data.wider_eval):
        monkeypatch.setattr(module, "save_figure", keep)
    caught.patch = lambda module: monkeypatch.setattr(module, "save_figure", keep)
    return caught


def _texts(fig) -> str:
    parts = [fig._suptitle.get_text() if fig._suptitle else ""] + [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        if ax.get_legend():
            parts += [t.get_text() for t in ax.get_legend().get_texts()]
    return " | ".join(parts)


def test_search_png_has_title_target_warmup_and_epoch_ticks(figures, tmp_path) -> None:
    from nas.searcher import _plot_history

    history = [{"epoch": e, "total": 5.0 / (e + 1), "expected_full": 30.0 - e, "argmax_cost": 31.0 - e}
               for e in range(7)]
    _plot_history(history, 25.0, "ms", tmp_path / "search.png", "FaceNAS search of space R5: target 25 ms", 3)
    (fig,) = figures
    text = _texts(fig)
    assert "FaceNAS search of space R5: target 25 ms" in text
    assert "target 25 ms" in text and "warm-up (3 epochs, weights only)" in text and "backbone cost (ms)" in text
    for ax in fig.axes:
        assert all(float(t).is_integer() for t in ax.get_xticks() if 0.5 <= t <= 7.5)  # whole epochs only
        spans = [p for p in ax.patches if p.get_label().startswith("warm-up")]
        assert len(spans) == 1
        x0, x1 = spans[0].get_x(), spans[0].get_x() + spans[0].get_width()
        assert (x0, x1) == pytest.approx((0.5, 3.5))  # epochs 1-3 shaded


def _plot_tool():
    spec = importlib.util.spec_from_file_location("tool_plot_latency_for_plots", ROOT / "tools" / "plot_latency.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_latency_plot_legends_fit_and_explain_the_codes(figures, tmp_path) -> None:
    from latency.analytic import analytic_table
    from latency.table_format import TableFile
    from models.naming import parse_block

    tool = _plot_tool()
    figures.patch(tool)
    keys = ["3x3_MBConv6_32_32x16x16_Id", "S_3x3_MBConv3_32_16x32x32", "SE_3x3_MBConv6_64_64x16x16_Id",
            "3x3_DKConv_32_32x16x16_HS_Id", "S_3x3_DKConv_64_32x32x32_1x1ConvPool", "3x3_DKConv_64_64x16x16_Id"]
    analytic_table("params", keys, 64, path=tmp_path / "params.json")
    tool.plot_table(TableFile.load(tmp_path / "params.json"), tmp_path / "plots", tmp_path / "grid.png")
    assert len(figures) == 2  # one resolution (16x16 output) and the grid
    assert tool.variant_label(parse_block("S_eSE_5x5_MBConv6_64_HS_1x1ConvPool")) == \
        "5x5, stride 2, expand x6, eSE, HardSwish, +pool & 1x1 conv"
    assert tool.variant_label(parse_block("3x3_BottleNeckConv4_64_Id")) == "3x3, bottleneck /4, +identity"
    for fig in figures:
        text = _texts(fig)
        assert "params" in text and "16x16" in text  # what is plotted, and at which resolution
        assert "expand xN' = MBConv expansion ratio" in text.replace("\n", " ")  # the key to the codes
        assert "3x3, expand x6, +identity" in text and "3x3, stride 2, +pool & 1x1 conv, from 32 ch" in text
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is not None:  # below the panel, not over the curves
                assert legend.get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y0 + 1


def _folders(tmp_path: Path):
    """Ground truth of a tiny synthetic val set, a perfect prediction folder and one that finds half the faces."""
    from data.synthetic import SyntheticConfig, generate_dataset
    from data.wider_eval import load_ground_truth, write_prediction_file

    root = generate_dataset(tmp_path / "data", SyntheticConfig(num_train=1, num_val=4, min_side=320, max_side=352,
                                                               seed=2))
    gt = load_ground_truth(root / "ground_truth")
    perfect, half = tmp_path / "runs" / "facenas_r12_v3_hs" / "widerface_val", tmp_path / "mobile"
    for event, name, boxes in zip(gt.events, gt.names, gt.boxes):
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        write_prediction_file(perfect, event, name, boxes, np.linspace(0.99, 0.5, len(boxes)))
        write_prediction_file(half, event, name, boxes[::2], np.full(len(boxes[::2]), 0.9))
    return root / "ground_truth", perfect, half


def test_pr_curves_of_several_folders_are_overlaid_and_titled_by_the_models(figures, tmp_path) -> None:
    sys.path.insert(0, str(ROOT))
    import evaluate

    gt_dir, perfect, half = _folders(tmp_path)
    assert evaluate.main(["--pred-dir", str(half), "--pred-dir", str(perfect), "--gt-dir", str(gt_dir), "--plot",
                          str(tmp_path / "pr.png"), "--json", str(tmp_path / "ap.json")]) == 0
    (fig,) = figures
    assert [ax.get_title().split(" (")[0] for ax in fig.axes] == ["Easy", "Medium", "Hard"]  # the toolbox's panels
    for ax in fig.axes:
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert len(ax.get_lines()) == 2 and labels[0].startswith("facenas_r12_v3_hs (AP 100.00%)")  # best first
        assert labels[1].startswith("mobile (AP ")
    assert fig._suptitle.get_text() == "WIDER FACE val: mobile vs facenas_r12_v3_hs (IoU 0.5)"
    saved = json.loads((tmp_path / "ap.json").read_text())
    assert [f["label"] for f in saved["folders"]] == ["mobile", "facenas_r12_v3_hs"]
    assert saved["folders"][1]["mean"] == pytest.approx(1.0) and saved["folders"][0]["mean"] < 0.9

    figures.clear()
    assert evaluate.main(["--pred-dir", str(perfect), "--gt-dir", str(gt_dir), "--plot", str(tmp_path / "one.png"),
                          "--label", "R12_V3_HS"]) == 0
    assert figures[0]._suptitle.get_text() == "WIDER FACE val: R12_V3_HS (IoU 0.5)"
    with pytest.raises(FaceNASError, match="one --label per --pred-dir"):  # a one-line error (exit 2 in run_cli)
        evaluate.main(["--pred-dir", str(perfect), "--pred-dir", str(half), "--gt-dir", str(gt_dir), "--label", "x"])
