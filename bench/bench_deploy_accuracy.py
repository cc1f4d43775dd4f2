"""What INT8 and ncnn cost in accuracy (issue 23; a benchmark, not a test): the same trained detector evaluated with
the official WIDER FACE protocol in PyTorch, ONNX Runtime float32, ONNX Runtime INT8 and ncnn.

For each ``train.py`` checkpoint: ``export.py`` writes the float32 ONNX detector, INT8 ones (``--int8``, 64
training images) with each calibration method (minmax, entropy, percentile) and, when the best of them still drops
by more than ``--max-drop`` points in a setting, that method with layers kept in float (``--int8-keep-float first``,
``heads``, ``first heads``); and the ncnn detector (``--format ncnn``). Every file is run over the val set by
``evaluate.py`` (original image size, SPEC section 8 test settings). ``--sensitivity METHOD`` adds one INT8 export
per part of the detector with only that part quantized, to find which layers cost the AP. Accuracy only: timing
these files belongs to ``bench/bench_runtimes.py`` on a quiet machine. Each file and score is kept in ``--out`` and
skipped when found, so the benchmark resumes.

    python bench/bench_deploy_accuracy.py --checkpoint mobile0.25=runs/m/last.pth \
        --checkpoint R12_V3_HS=runs/r/last.pth
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.atomic import atomic_write_json, atomic_write_text  # noqa: E402

SETTINGS = ("easy", "medium", "hard")
KEEP_FLOAT = (("first",), ("heads",), ("first", "heads"))
METHODS = ("minmax", "entropy", "percentile")


def run(command: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        done = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}; see {log}")


def scored(name: str, model_file: Path, folder: Path, threads: int, data_root: str | None) -> dict[str, Any]:
    """AP of one model file (cached in ``folder/NAME.eval.json``)."""
    result = folder / f"{name}.eval.json"
    if not result.is_file():
        run([sys.executable, "evaluate.py", "--checkpoint", str(model_file), "--pred-dir", str(folder / f"{name}_pred"),
             "--json", str(result), "--device", "cpu", "--threads", str(threads),
             *(["--data-root", data_root] if data_root else [])],
            folder / "log.txt")
    data = json.loads(result.read_text())
    return {s: 100 * float(data[s]) for s in SETTINGS}


def exported(args: argparse.Namespace, checkpoint: Path, target: Path, extra: list[str]) -> Path:
    if not target.is_file():
        run([sys.executable, "export.py", "--checkpoint", str(checkpoint), "--out", str(target), "--threads",
             str(args.threads), *extra, *(["--data-root", args.data_root] if args.data_root and "--int8" in extra
                                          else [])], target.parent / "log.txt")
    return target


def node_groups(onnx_file: Path) -> dict[str, str]:
    """Parts of an exported detector, each as the node-name substring that selects it: the backbone's stem, each
    stage and its last conv, the FPN, each SSH context module, the heads (``deploy.quantize.float_node_names``)."""
    import onnx

    groups: dict[str, str] = {}
    for node in onnx.load(str(onnx_file)).graph.node:
        parts = node.name.strip("/").split("/")
        if len(parts) < 3 or parts[0] != "detector":
            continue  # shape constants outside any module
        part, sub = parts[1], parts[2]
        if part == "backbone":
            # the stem's nodes sit directly under backbone/ (stem_conv, stem_bn, ...), the stages in their folders
            name, selector = ("stem", "stem") if sub.startswith("stem") else (sub, sub + "/")
            groups.setdefault(f"backbone {name}", f"/detector/backbone/{selector}")
        elif "_head." in part:
            groups.setdefault("heads", "_head")
        else:
            groups.setdefault(part, f"/detector/{part}/")
    return groups


def sensitivity(args: argparse.Namespace, label: str, checkpoint: Path, folder: Path, method: str,
                reference: dict[str, Any]) -> list[dict[str, Any]]:
    """Which part breaks INT8: one export per part with only that part quantized (the rest kept in float)."""
    groups = node_groups(folder / "fp32.onnx")
    rows = []
    for name in groups:
        others = [p for n, p in groups.items() if n != name]
        tag = name.replace(" ", "_").replace(".", "")
        path = exported(args, checkpoint, folder / f"int8_{method}_only_{tag}.onnx",
                        ["--int8", "--calibration-method", method, "--int8-tolerance", "1", "--int8-keep-float",
                         *others])
        row = {"model": label, "variant": f"ORT int8, {method}, only {name} quantized",
               **scored(f"ort_int8_{method}_only_{tag}", path, folder, args.threads, args.data_root)}
        row["drop_vs_pytorch"] = {s: reference[s] - row[s] for s in SETTINGS}
        rows.append(row)
    return rows


def study(args: argparse.Namespace, label: str, checkpoint: Path) -> list[dict[str, Any]]:
    folder = args.out / label
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"model": label, "variant": "PyTorch", **scored("pytorch", checkpoint, folder, args.threads,
                                                             args.data_root)}]
    onnx = exported(args, checkpoint, folder / "fp32.onnx", [])
    rows.append({"model": label, "variant": "ORT fp32", **scored("ort_fp32", onnx, folder, args.threads,
                                                                  args.data_root)})
    # every calibration method; the AP decides, so the export's own closeness check is loosened
    for method in METHODS:
        path = exported(args, checkpoint, folder / f"int8_{method}.onnx",
                        ["--int8", "--calibration-method", method, "--int8-tolerance", "1"])
        rows.append({"model": label, "variant": f"ORT int8, {method}",
                     **scored(f"ort_int8_{method}", path, folder, args.threads, args.data_root)})
    best = max(rows[2:], key=lambda row: sum(row[s] for s in SETTINGS))
    method = best["variant"].rpartition(" ")[2]
    if max(rows[0][s] - best[s] for s in SETTINGS) > args.max_drop:
        for keep in KEEP_FLOAT:
            tag = "_".join(keep)
            path = exported(args, checkpoint, folder / f"int8_{method}_keep_{tag}.onnx",
                            ["--int8", "--calibration-method", method, "--int8-tolerance", "1", "--int8-keep-float",
                             *keep])
            rows.append({"model": label, "variant": f"ORT int8, {method}, {' + '.join(keep)} in float",
                         **scored(f"ort_int8_{method}_keep_{tag}", path, folder, args.threads, args.data_root)})
    param = exported(args, checkpoint, folder / "det.ncnn.param", ["--format", "ncnn"])
    rows.append({"model": label, "variant": "ncnn fp32", **scored("ncnn", param, folder, args.threads,
                                                                   args.data_root)})
    for row in rows:
        row["drop_vs_pytorch"] = {s: rows[0][s] - row[s] for s in SETTINGS}
    if args.sensitivity:
        rows += sensitivity(args, label, checkpoint, folder, args.sensitivity, rows[0])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, metavar="LABEL=CKPT",
                        help="a train.py checkpoint and its label (repeat)")
    parser.add_argument("--data-root", default=None, help="dataset (default: the built-in synthetic one)")
    parser.add_argument("--threads", type=int, default=1, help="threads of the export checks")
    parser.add_argument("--max-drop", type=float, default=1.0,
                        help="INT8 AP drop (points, any setting) above which layers are kept in float")
    parser.add_argument("--sensitivity", choices=METHODS, default=None,
                        help="also quantize one part of the detector at a time (backbone stem, each stage, FPN, "
                             "each SSH module, heads) with this calibration method, the rest in float: which part "
                             "costs the AP")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "deploy_accuracy",
                        help="work folder")
    args = parser.parse_args()
    rows = []
    for item in args.checkpoint:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            raise SystemExit(f"--checkpoint {item!r}: give LABEL=CKPT with an existing checkpoint")
        rows += study(args, label, Path(path))
    lines = ["| model | variant | Easy | Medium | Hard | drop Easy | drop Medium | drop Hard |",
             "|---|---|" + "---:|" * 6]
    for row in rows:
        drop = row["drop_vs_pytorch"]
        lines.append(f"| {row['model']} | {row['variant']} | " + " | ".join(f"{row[s]:.2f}" for s in SETTINGS) + " | "
                     + " | ".join(f"{drop[s]:+.2f}" for s in SETTINGS) + " |")
    text = "\n".join(lines) + "\n"
    atomic_write_json(args.out / "report.json", {"rows": rows})
    atomic_write_text(args.out / "report.md", text)
    print(text)


if __name__ == "__main__":
    main()
