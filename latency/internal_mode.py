"""Internal mode (thesis 3.6.1): a table that measures its missing blocks on this machine.

:class:`LatencyTable` is the file format of :mod:`latency.table_format` plus measurement on this machine:

* ``table.measure_missing(keys)`` -> internal mode: the keys without an entry are measured here with the table's own
  protocol, batch, threads, dtype and memory format, and the table is saved atomically after each one, so a later run
  (or a crash) keeps them. It refuses when the table was measured on another machine: mixing devices in one table
  would silently corrupt the search's latency estimates.
* ``LatencyTable.create(path, device="cpu", batch=1, resolution=320)`` fills in this machine's facts (CPU model or GPU
  name, threads, torch version) and the default protocol, so a search can start from an empty table;
* ``table.calibrate_here(spaces)`` measures random whole networks of the spaces here and fits the table's
  calibration on them, as ``profile_latency.py`` does on a device.

Analytic tables (FLOPs, parameters, activations; :mod:`latency.analytic`) load through the same class; their
missing entries are computed instead of measured.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from latency.analytic import block_counts
from latency.anchor import anchor_wanted, corrected, start_anchor
from latency.measure import machine_meta, machine_problem
from latency.predict import calibrate_from_networks, describe_calibration
from latency.random_archs import validation_and_fit_archs
from latency.runtimes import measure_table_block, measure_table_networks, table_block_timer
from latency.table_format import METRICS, TableFile
from models.search_space import SearchSpace
from utils.errors import FaceNASError
from utils.progress import Progress, track

__all__ = ["LatencyTable"]


class LatencyTable(TableFile):
    """A latency (or analytic cost) table with on-demand measurement; see the module docstring."""

    @classmethod
    def create(cls, path: str | os.PathLike | None, **meta: Any) -> LatencyTable:
        """A new table; for a latency table whose ``meta`` lacks ``device_name`` this machine's facts are filled in."""
        if meta.get("metric", "latency") == "latency" and "device_name" not in meta:
            meta = machine_meta(**meta)
        return super().create(path, **meta)  # type: ignore[return-value]

    @classmethod
    def open_or_create(cls, path: str | os.PathLike, **meta: Any) -> LatencyTable:
        """Resume ``path`` when its identity matches ``meta`` (completed with this machine's facts), else create."""
        if meta.get("metric", "latency") == "latency" and "device_name" not in meta:
            meta = machine_meta(**meta)
        return super().open_or_create(path, **meta)  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------ internal mode
    def machine_problem(self) -> str | None:
        """Why this machine cannot add measurements to the table, or ``None`` when it can."""
        if self.metric != "latency":
            return None
        return machine_problem(self.meta)

    def check_this_machine(self) -> None:
        """Raise :class:`FaceNASError` when the table describes another device (see :meth:`machine_problem`)."""
        problem = self.machine_problem()
        if problem:
            raise FaceNASError(f"{self.path}: {problem}; measure missing blocks on that device with "
                               "profile_latency.py --names-file FILE --out TABLE, or start a new table here")

    def measure_missing(self, keys: Iterable[str], progress: bool = True,
                        log: Callable[[str], None] | None = None) -> list[str]:
        """Measure (latency) or compute (analytic metrics) every key of ``keys`` that has no entry, saving after each.

        Args:
            keys: block keys (with inputs); ``Zero`` keys and keys already present are ignored.
            progress: show a progress bar.
            log: called with one line per measured key (e.g. a :class:`~latency.table_format.RunLog`).

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
        write = log or (lambda line: None)
        anchor = None
        if self.metric == "latency":  # the same drift anchor as profile_latency.py (latency.anchor)
            anchor = start_anchor(self.meta, missing, anchor_wanted(self.meta, len(self) > 0), table_block_timer)
        for key in track(missing, desc=f"measuring {len(missing)} missing blocks", unit="block", enabled=progress):
            if self.metric == "latency":
                factor = anchor.factor() if anchor is not None else None
                stats = self._measure(key)
                if factor is not None:
                    stats = corrected(stats, factor)
                line = (f"measured {key} mean={stats['mean_ms']:.4f} ms median={stats['median_ms']:.4f} "
                        f"p10={stats['p10_ms']:.4f} p90={stats['p90_ms']:.4f} n={stats['n']} load={stats['load']} "
                        "(internal mode)")
            else:
                stats = {"value": block_counts(key, self.batch)[self.metric] / 1e6}
                line = f"computed {key} {self.metric}={stats['value']:.6f} {METRICS[self.metric][1]}"
            self.add(key, stats)
            if self.path is not None:
                self.save()
            write(line)
        return missing

    def calibrate_here(self, spaces: list[SearchSpace], fit: int = 24, validate: int = 8, repeats: int = 3,
                       fit_seed: int = 1000, seed: int = 500, progress: bool = True,
                       log: Callable[[str], None] | None = None) -> dict[str, Any] | None:
        """Internal-mode calibration: measure ``fit`` + ``validate`` random networks of ``spaces`` end to end here
        (their missing blocks first), store them in the table and fit its calibration on the ``fit`` ones, as
        ``profile_latency.py`` does on a device. Networks already stored are not measured again.

        Returns:
            The stored calibration (``meta.calibration``), or ``None`` for an analytic table.
        """
        if self.metric != "latency":
            return None
        self.check_this_machine()
        checked, fitting = validation_and_fit_archs(spaces, validate, seed, fit, fit_seed)
        todo = [(a, "validate") for a in checked if a.name not in self.networks]
        todo += [(a, "fit") for a in fitting if a.name not in self.networks]
        self.measure_missing([b.key for arch, _ in todo for b in arch.resolve(self.input_size)], progress, log)
        if todo:
            with Progress(len(todo) * repeats, f"measuring {len(todo)} calibration networks", "run",
                          enabled=progress) as bar:
                results = measure_table_networks([a for a, _ in todo], self.meta, repeats, seed,
                                                 lambda: bar.update(1))
            for arch, role in todo:
                self.add_network(arch.name, arch.to_dict(), results[arch.name], role)
        calibration = calibrate_from_networks(self)
        if self.path is not None:
            self.save()
        if log is not None:
            log(describe_calibration(calibration))
        return calibration

    def _measure(self, key: str) -> dict[str, Any]:
        return measure_table_block(key, self.meta)

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
