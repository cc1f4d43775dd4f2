"""Latency tables for the search: lookups, calibration and internal mode (thesis 3.6.1).

:class:`LatencyTable` is the file format of :mod:`nas.table_file` plus measurement on this machine:

* ``table.latency(key)`` -> milliseconds (times the table's calibration scale unless ``calibrated=False``); a
  missing key raises :class:`~utils.errors.FaceNASError` naming the table, the key and how to measure it.
* ``table.measure_missing(keys)`` -> internal mode: the keys without an entry are measured here with the table's own
  protocol, batch, threads, dtype and memory format, and the table is saved atomically after each one, so a later run
  (or a crash) keeps them. It refuses when the table was measured on another machine: mixing devices in one table
  would silently corrupt the search's latency estimates.
* ``LatencyTable.create(path, device="cpu", batch=1, resolution=320)`` fills in this machine's facts (CPU model or GPU
  name, threads, torch version) and the default protocol, so a search can start from an empty table.

Analytic tables (FLOPs, parameters, activations; :mod:`nas.cost`) load through the same class; their missing
entries are computed instead of measured.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from nas.table_file import METRICS, TableFile, now_iso
from utils.errors import FaceNASError

__all__ = ["LatencyTable"]


class LatencyTable(TableFile):
    """A latency (or analytic cost) table with on-demand measurement; see the module docstring."""

    @classmethod
    def create(cls, path: str | os.PathLike | None, **meta: Any) -> LatencyTable:
        """A new table; for a latency table whose ``meta`` lacks ``device_name`` this machine's facts are filled in."""
        if meta.get("metric", "latency") == "latency" and "device_name" not in meta:
            from nas.measure import machine_meta

            meta = machine_meta(**meta)
        return super().create(path, **meta)  # type: ignore[return-value]

    @classmethod
    def open_or_create(cls, path: str | os.PathLike, **meta: Any) -> LatencyTable:
        """Resume ``path`` when its identity matches ``meta`` (completed with this machine's facts), else create."""
        if meta.get("metric", "latency") == "latency" and "device_name" not in meta:
            from nas.measure import machine_meta

            meta = machine_meta(**meta)
        return super().open_or_create(path, **meta)  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------ internal mode
    def machine_problem(self) -> str | None:
        """Why this machine cannot add measurements to the table, or ``None`` when it can."""
        if self.metric != "latency":
            return None
        from nas.measure import device_info

        device = self.meta["device"]
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                return "the table was measured on a CUDA GPU and CUDA is not available here"
        here = device_info(device)
        for field in ("device_name", "machine"):
            want = self.meta.get(field)
            if want is not None and here.get(field) != want:
                return f"the table was measured on {field}={want!r} but this machine is {here.get(field)!r}"
        return None

    def check_this_machine(self) -> None:
        """Raise :class:`FaceNASError` when the table describes another device (see :meth:`machine_problem`)."""
        problem = self.machine_problem()
        if problem:
            raise FaceNASError(f"{self.path}: {problem}; measure missing blocks on that device with "
                               "profile_latency.py --names-file FILE --out TABLE, or start a new table here")

    def measure_missing(self, keys: Iterable[str], progress: bool = True,
                        log: str | os.PathLike | Callable[[str], None] | None = None) -> list[str]:
        """Measure (latency) or compute (analytic metrics) every key of ``keys`` that has no entry, saving after each.

        Args:
            keys: block keys (with inputs); ``Zero`` keys and keys already present are ignored.
            progress: show a tqdm bar (when tqdm is installed).
            log: a text file to append one line per measured key to, or a callable taking that line.

        Returns:
            The keys that were added.

        Raises:
            FaceNASError: the table was measured on another machine (nothing is measured), or a key is invalid.
        """
        missing = self.missing(list(keys))
        if not missing:
            return []
        if self.metric == "latency":
            problem = self.machine_problem()
            if problem:
                listing = self._write_missing_list(missing)
                raise FaceNASError(f"{self.path}: {len(missing)} block(s) missing (e.g. {missing[0]}) and {problem}; "
                                   f"measure them on that device: profile_latency.py --names-file {listing} --out "
                                   f"{self.path.name if self.path else 'TABLE'}")
        write = _log_writer(log)
        for key in _progress(missing, progress, f"measuring {len(missing)} missing blocks"):
            if self.metric == "latency":
                stats = self._measure(key)
                line = (f"{now_iso()} measured {key} mean={stats['mean_ms']:.4f} ms median={stats['median_ms']:.4f} "
                        f"p10={stats['p10_ms']:.4f} p90={stats['p90_ms']:.4f} n={stats['n']} (internal mode)")
            else:
                from nas.cost import block_counts

                stats = {"value": block_counts(key, self.batch)[self.metric] / 1e6}
                line = f"{now_iso()} computed {key} {self.metric}={stats['value']:.6f} {METRICS[self.metric][1]}"
            self.add(key, stats)
            if self.path is not None:
                self.save()
            write(line)
        return missing

    def _measure(self, key: str) -> dict[str, Any]:
        from nas.measure import measure_block

        protocol = self.meta["protocol"]
        return measure_block(key, self.batch, self.meta["device"], protocol["warmup"], protocol["samples"],
                             self.meta.get("threads"), dtype=self.meta["dtype"],
                             channels_last=self.meta["memory_format"] == "channels_last", trim=protocol["trim"])

    def _write_missing_list(self, keys: list[str]) -> str:
        """Write the missing keys next to the table (for ``--names-file``); returns the file name."""
        if self.path is None:
            return "MISSING.txt"
        target = self.path.with_name(self.path.stem + ".missing.txt")
        try:
            target.write_text("".join(k + "\n" for k in keys), encoding="utf-8")
        except OSError:
            return "MISSING.txt"
        return str(target)


def _log_writer(log: str | os.PathLike | Callable[[str], None] | None) -> Callable[[str], None]:
    if log is None:
        return lambda line: None
    if callable(log):
        return log
    path = Path(log)

    def write(line: str) -> None:
        with path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    return write


def _progress(items: list[str], enabled: bool, desc: str) -> Iterable[str]:
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="block", leave=False)
