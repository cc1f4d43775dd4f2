"""The latency-table file: JSON schema, validated loading, atomic saving and resume (SPEC section 7).

A table is one JSON object (full description in ``docs/LATENCY.md``)::

    {
      "format": "facenas-latency-table/1",
      "meta": {"metric": "latency", "unit": "ms", "device": "cpu", "device_name": "AMD EPYC 7B13", "threads": 2,
               "batch": 1, "resolution": 320, "dtype": "float32", "memory_format": "contiguous", "bn_folded": true,
               "torch_version": "2.4.0", "protocol": {"warmup": 20, "samples": 50, "trim": 0.1}, "created": "...",
               "calibration": {"scale": 1.07, ...} or null, ...},
      "entries": {"S_3x3_Conv_8_3x320x320": {"mean_ms": 0.41, "median_ms": 0.40, "p10_ms": 0.39, "p90_ms": 0.45,
                                            "n": 50}, ...},
      "skipped": {"<key>": {"filter": "max_ms", "reason": "...", "first5_ms": 812.0}},
      "networks": {"<name>": {"arch": {...}, "role": "validate", "measured_ms": 41.2, "rounds_ms": [...],
                              "spread": 3.1}}
    }

Keys are block names with their input tensor (:mod:`models.naming`); batch, device, threads and dtype live in the
metadata. Analytic tables (``metric`` = ``flops`` / ``params`` / ``acts``, see :mod:`latency.analytic`) use
the same file with ``{"value": ...}`` entries, so a search can swap a FLOPs table in for a latency table.
``networks`` (optional) holds whole backbones measured end to end on the same device, so that
``tools/latency_report.py --from-table`` can check and calibrate the predictor for a device the project does not run
on.

Every write goes through :func:`utils.atomic.atomic_write_json`; a table opened again with the same identity (device,
batch, resolution, threads, dtype, ...) keeps its entries, so an interrupted profile resumes where it stopped.

Standard library only (plus naming): ``profile_latency.py`` embeds this file.
"""
from __future__ import annotations

import datetime
import math
import os
from pathlib import Path
from typing import Any

from latency.calibration import Calibration, coef_problem
from models.naming import format_block, parse_block
from utils.atomic import atomic_write_json
from utils.errors import FaceNASError
from utils.jsonfile import read_json

TABLE_FORMAT = "facenas-latency-table/1"
#: metric -> (entry field holding the value, unit)
METRICS = {"latency": ("mean_ms", "ms"), "flops": ("value", "MFLOPs"), "params": ("value", "M params"),
           "acts": ("value", "M acts")}
LATENCY_FIELDS = ("mean_ms", "median_ms", "p10_ms", "p90_ms", "n")
#: Statistics newer entries also keep (tables written before them lack them, so they are not required).
OPTIONAL_LATENCY_FIELDS = ("min_ms",)
#: protocol.estimator -> the entry field a table's values are read from (the statistic of the timed samples).
ESTIMATORS = {"trimmed_mean": "mean_ms", "median": "median_ms", "p10": "p10_ms", "min": "min_ms"}
#: Metadata that must agree before entries of one table may be combined with new measurements.
IDENTITY_FIELDS = ("metric", "device", "device_name", "machine", "threads", "batch", "resolution", "dtype",
                   "memory_format", "bn_folded", "runtime", "runtime_version", "execution_provider",
                   "graph_optimization", "precision", "quantization")
#: What a table that predates runtime-aware tables was measured in.
DEFAULT_RUNTIME = {"runtime": "torch"}
_MEASURED_FIELDS = ("device", "device_name", "threads", "dtype", "memory_format", "protocol")
_HOW_TO_MEASURE = "run profile_latency.py with --names {key} --out {path} on the table's device"


def now_iso() -> str:
    """The current UTC time as an ISO-8601 string (seconds)."""
    # datetime.UTC needs Python 3.11; the device script also runs on older interpreters
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()  # noqa: UP017


class TableFile:
    """A latency (or analytic cost) table: metadata plus one entry per block key.

    Build one with :meth:`load`, :meth:`create` or :meth:`open_or_create`. ``latency.internal_mode.LatencyTable`` adds
    on-demand measurement on top of this class.

    Attributes:
        path: the file (``None`` for an in-memory table).
        meta: the metadata dict (see the module docstring).
        entries: key -> stats dict.
        skipped: key -> why the profiler skipped it.
        networks: name -> whole backbone measured end to end (architecture dict, role, rounds, median).
    """

    def __init__(self, path: str | os.PathLike | None, meta: dict[str, Any],
                 entries: dict[str, dict[str, Any]] | None = None, skipped: dict[str, dict[str, Any]] | None = None):
        self.path = None if path is None else Path(path)
        self.meta = meta
        self.entries = entries if entries is not None else {}
        self.skipped = skipped if skipped is not None else {}
        self.networks: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------------------------------------ building
    @classmethod
    def create(cls, path: str | os.PathLike | None, **meta: Any) -> TableFile:
        """A new, empty table with ``meta`` completed by defaults; saved at once when ``path`` is given.

        Raises:
            FaceNASError: ``path`` exists already (use :meth:`open_or_create` to resume it), or the metadata is
                invalid.
        """
        if path is not None and Path(path).exists():
            raise FaceNASError(f"{path}: table exists already; open it with open_or_create (or the profiler) to add "
                               "entries, or choose another file")
        metric = meta.get("metric", "latency")
        full = {"metric": metric, "unit": METRICS.get(metric, ("", ""))[1], "batch": 1, "resolution": None,
                "calibration": None, "created": now_iso()}
        if metric == "latency":
            full.update({"dtype": "float32", "memory_format": "contiguous", "bn_folded": True})
        full.update(meta)
        table = cls(path, full)
        table._check_meta(str(path or "table"), None)
        if path is not None:
            table.save()
        return table

    @classmethod
    def open_or_create(cls, path: str | os.PathLike, **meta: Any) -> TableFile:
        """Load ``path`` and check that its identity matches ``meta`` (resume), or create it when missing.

        Metadata fields outside :data:`IDENTITY_FIELDS` (date, notes, preset...) never block a resume; the protocol
        of an existing table wins.
        """
        if not Path(path).exists():
            return cls.create(path, **meta)
        table = cls.load(path)
        table.check_identity(meta)
        return table

    @classmethod
    def load(cls, path: str | os.PathLike) -> TableFile:
        """Read and validate a table file.

        Raises:
            FaceNASError: missing file, malformed JSON (``file:line``), wrong schema, types or values (one line naming
                the file, the line where it can be found and what to do).
        """
        data, text = read_json(path, "latency table", f"create it with profile_latency.py --out {path} (or "
                               "latency.analytic for a FLOPs/params/acts table)")
        return cls.from_data(data, path, text)

    @classmethod
    def from_data(cls, data: Any, path: str | os.PathLike | None, text: str = "") -> TableFile:
        """Build a table from its parsed JSON (``text`` is the raw file, used to point errors at a line)."""
        where = str(path or "table")

        def fail(message: str, needle: str | None = None) -> FaceNASError:
            line = _line_of(text, needle) if needle else None
            return FaceNASError(f"{where}{f':{line}' if line else ''}: {message}")

        if not isinstance(data, dict):
            raise fail("a latency table is a JSON object with format, meta and entries (see docs/LATENCY.md)")
        if data.get("format") != TABLE_FORMAT:
            found = data.get("format")
            raise fail(f"format is {found!r}, expected {TABLE_FORMAT!r}; this is not a FaceNAS latency table or it "
                       "was written by another version", '"format"' if found is not None else None)
        unknown = set(data) - {"format", "meta", "entries", "skipped", "networks"}
        if unknown:
            raise fail(f"unknown top-level field(s) {', '.join(sorted(unknown))}; remove them",
                       f'"{sorted(unknown)[0]}"')
        for name in ("meta", "entries"):
            if not isinstance(data.get(name), dict):
                raise fail(f"'{name}' must be a JSON object", f'"{name}"')
        skipped_raw = data.get("skipped", {})
        if not isinstance(skipped_raw, dict):
            raise fail("'skipped' must be a JSON object of key -> reason", '"skipped"')
        table = cls(path, dict(data["meta"]))
        table._check_meta(where, text)
        for raw_key, entry in data["entries"].items():
            key = _canonical(raw_key, lambda msg, k=raw_key: fail(f"entry {k!r}: {msg}", f'"{k}"'))
            problem = _entry_problem(entry, table.meta["metric"])
            if problem is None and table.metric == "latency" and ESTIMATORS[table.estimator] not in entry:
                problem = (f"lacks {ESTIMATORS[table.estimator]!r}, which protocol.estimator "
                           f"{table.estimator!r} reads")
            if problem:
                raise fail(f"entry {raw_key!r}: {problem}; fix the entry or delete it and measure it again",
                           f'"{raw_key}"')
            if key in table.entries:
                raise fail(f"entries {raw_key!r} and another spelling name the same block {key!r}; keep one",
                           f'"{raw_key}"')
            table.entries[key] = dict(entry)
        for raw_key, info in skipped_raw.items():
            key = _canonical(raw_key, lambda msg, k=raw_key: fail(f"skipped {k!r}: {msg}", f'"{k}"'))
            if not isinstance(info, dict) or not isinstance(info.get("reason"), str):
                raise fail(f"skipped {raw_key!r} must be an object with a 'reason' string", f'"{raw_key}"')
            table.skipped[key] = dict(info)
        networks = data.get("networks", {})
        if not isinstance(networks, dict):
            raise fail("'networks' must be a JSON object of name -> measured network", '"networks"')
        for name, record in networks.items():
            problem = _network_problem(record)
            if problem:
                raise fail(f"network {name!r}: {problem}; fix it or delete the network and measure it again",
                           f'"{name}"')
            table.networks[name] = dict(record)
        return table

    # ------------------------------------------------------------------------------------------------ checks
    def _check_meta(self, where: str, text: str | None) -> None:
        """Validate types and values of the metadata (one-line errors naming the field and its line)."""
        meta = self.meta

        def fail(field: str, message: str) -> FaceNASError:
            line = _line_of(text or "", f'"{field}"')
            return FaceNASError(f"{where}{f':{line}' if line else ''}: meta.{field} {message}")

        metric = meta.get("metric")
        if metric not in METRICS:
            raise fail("metric", f"must be one of {', '.join(METRICS)}, not {metric!r}")
        for field in ("batch", "threads"):
            value = meta.get(field)
            if field == "threads" and value is None and metric != "latency":
                continue
            if not _is_int(value) or value < 1:
                raise fail(field, f"must be a positive integer, not {value!r}")
        resolution = meta.get("resolution")
        if resolution is not None and (not _is_int(resolution) or resolution < 1):
            raise fail("resolution", f"must be a positive integer (input side in pixels) or null, not {resolution!r}")
        if metric == "latency":
            for field in _MEASURED_FIELDS:
                if field not in meta:
                    raise fail(field, "is missing; latency tables record how they were measured (re-create the "
                                      "table with profile_latency.py)")
            if meta["device"] not in ("cpu", "cuda"):
                raise fail("device", f"must be cpu or cuda, not {meta['device']!r}")
            for field in ("device_name", "dtype"):
                if not isinstance(meta[field], str) or not meta[field]:
                    raise fail(field, "must be a non-empty string")
            if meta["memory_format"] not in ("contiguous", "channels_last"):
                raise fail("memory_format", f"must be contiguous or channels_last, not {meta['memory_format']!r}")
            protocol = meta["protocol"]
            if not isinstance(protocol, dict):
                raise fail("protocol", "must be an object with warmup, samples and trim")
            for field, low in (("warmup", 0), ("samples", 1)):
                if not _is_int(protocol.get(field)) or protocol[field] < low:
                    raise fail("protocol", f"{field} must be an integer >= {low}, not {protocol.get(field)!r}")
            trim = protocol.get("trim")
            if not _is_number(trim) or not 0 <= trim < 0.5:
                raise fail("protocol", f"trim must be a number in [0, 0.5), not {trim!r}")
        if metric == "latency" and meta["protocol"].get("estimator", "trimmed_mean") not in ESTIMATORS:
            raise fail("protocol", f"estimator must be one of {', '.join(ESTIMATORS)}, not "
                                   f"{meta['protocol'].get('estimator')!r}")
        calibration = meta.get("calibration")
        if calibration is not None:
            if not isinstance(calibration, dict):
                problem = "must be null or an object"
            elif "coef" in calibration:
                problem = coef_problem(calibration["coef"])
            else:
                scale, offset = calibration.get("scale"), calibration.get("offset_ms", 0.0)
                problem = None if (_is_number(scale) and math.isfinite(scale) and scale > 0 and _is_number(offset)
                                   and math.isfinite(offset)) else "'scale' must be a positive number (and " \
                                                                   "'offset_ms' a number)"
            if problem:
                raise fail("calibration", f"{problem}; refit it with tools/latency_report.py --fit-calibration or "
                                          "profile the device again")

    def check_identity(self, wanted: dict[str, Any]) -> None:
        """Raise when ``wanted`` disagrees with this table on an identity field (device, batch, resolution...)."""
        for field in IDENTITY_FIELDS:
            if field == "runtime_version" and wanted.get("runtime", "torch") == "torch":
                continue  # eager tables only warn about another torch version (the profiler does)
            if field not in wanted or (field not in self.meta and field not in DEFAULT_RUNTIME):
                continue
            have, want = self.meta.get(field, DEFAULT_RUNTIME.get(field)), wanted[field]
            if have != want:
                flag = {"batch": "--batch", "resolution": "--resolution", "threads": "--threads",
                        "device": "--device", "dtype": "--dtype", "memory_format": "--channels-last",
                        "runtime": "--runtime", "execution_provider": "--provider",
                        "graph_optimization": "--graph-optimization", "precision": "--precision"}.get(field)
                hint = f"use the table's {flag} value or" if flag else "measure into"
                raise FaceNASError(f"{self.path}: table has {field}={have!r} but this run has {field}={want!r}; "
                                   f"{hint} {'write to ' if flag else ''}another --out file (nothing was changed)")

    # ---------------------------------------------------------------------------------------------- properties
    @property
    def metric(self) -> str:
        return self.meta["metric"]

    @property
    def unit(self) -> str:
        return self.meta.get("unit") or METRICS[self.metric][1]

    @property
    def batch(self) -> int:
        return int(self.meta["batch"])

    @property
    def input_size(self) -> int:
        """The network input side the table was built for (its ``resolution``)."""
        if self.meta.get("resolution") is None:
            raise FaceNASError(f"{self.path}: the table records no resolution (it was built from --names only); "
                               "set meta.resolution or re-create it with --resolution")
        return int(self.meta["resolution"])

    @property
    def device(self) -> str | None:
        return self.meta.get("device")

    @property
    def calibration(self) -> Calibration | None:
        """The table's calibration (``None`` when it has none or is not a latency table)."""
        data = self.meta.get("calibration")
        if self.metric != "latency" or not data:
            return None
        if getattr(self, "_calibration_source", None) is not data:  # parsed once per calibration object
            self._calibration_source, self._calibration = data, Calibration.from_meta(data)
        return self._calibration

    @property
    def runtime(self) -> str:
        """The runtime the table's latencies were measured in (``torch`` = eager PyTorch, older tables too)."""
        return self.meta.get("runtime") or "torch"

    @property
    def estimator(self) -> str:
        """The statistic of the timed samples this table's values use (``protocol.estimator``)."""
        return self.meta.get("protocol", {}).get("estimator", "trimmed_mean") if self.metric == "latency" else ""

    @property
    def scale(self) -> float:
        """The calibration's multiplier of plain entries (1.0 when the table has none)."""
        return 1.0 if self.calibration is None else self.calibration.scale

    @property
    def offset_ms(self) -> float:
        """The calibration's per-network constant in ms (0.0 when it has none).

        It belongs to the whole backbone, not to any block: :func:`latency.predict.predict_latency` adds it once, and a
        search adds it to the fixed parts of its expected latency.
        """
        return 0.0 if self.calibration is None else self.calibration.offset

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: str) -> bool:
        return _canonical_or_none(key) in self.entries

    def keys(self) -> list[str]:
        return list(self.entries)

    # ---------------------------------------------------------------------------------------------- lookups
    def value(self, key: str) -> float:
        """The raw (uncalibrated) value of ``key``: the estimator's field for latency, ``value`` for analytic metrics.

        ``Zero`` blocks (the skipped layer of the search) cost 0 by definition.

        Raises:
            FaceNASError: the key is not in the table (never a silent default).
        """
        canonical = _canonical_or_none(key)
        if canonical is not None and canonical.startswith("Zero"):
            return 0.0
        entry = self.entries.get(canonical) if canonical else None
        if entry is None:
            if canonical is None:
                raise FaceNASError(f"{self.path}: {key!r} is not a block key (see models/naming.py for the grammar)")
            skipped = self.skipped.get(canonical)
            why = f" (the profiler skipped it: {skipped['reason']})" if skipped else ""
            how = (_HOW_TO_MEASURE.format(key=canonical, path=self.path) if self.metric == "latency"
                   else "rebuild the table with python -m latency.analytic for this space")
            raise FaceNASError(f"{self.path}: no entry for {canonical}{why}; {how}, or use internal mode "
                               "(measure_missing) when the search runs on that device")
        return float(entry[ESTIMATORS[self.estimator] if self.metric == "latency" else "value"])

    def latency(self, key: str, calibrated: bool = True) -> float:
        """The table's cost of block ``key`` (ms for a latency table), calibrated unless disabled.

        With a calibration this is the block's share of a whole network's latency (:mod:`latency.calibration`); the
        per-network constant (:attr:`offset_ms`) is added once per network by the predictor.
        """
        value = self.value(key)
        if not calibrated or self.calibration is None:
            return value
        return self.calibration.block_cost(parse_block(key), value, self.batch)

    def missing(self, keys: list[str]) -> list[str]:
        """Canonical keys of ``keys`` that have no entry (``Zero`` excluded, duplicates removed, order kept)."""
        out = []
        for key in keys:
            canonical = _canonical(key, lambda msg, k=key: FaceNASError(f"{k!r}: {msg}"))
            if not canonical.startswith("Zero") and canonical not in self.entries:
                out.append(canonical)
        return list(dict.fromkeys(out))

    # --------------------------------------------------------------------------------------------- updating
    def add(self, key: str, stats: dict[str, Any]) -> str:
        """Store an entry (the fields of :data:`LATENCY_FIELDS`, or ``value``); returns the canonical key."""
        canonical = _canonical(key, lambda msg: FaceNASError(f"{key!r}: {msg}"))
        if self.metric == "latency":
            entry = _latency_entry(stats)
        else:
            entry = {"value": float(stats["value"])}
        problem = _entry_problem(entry, self.metric)
        if problem:
            raise ValueError(f"entry {canonical}: {problem}")
        self.entries[canonical] = entry
        self.skipped.pop(canonical, None)
        return canonical

    def rounds_of(self, key: str) -> int:
        """How many measurement rounds the entry of ``key`` holds (0 when there is none)."""
        entry = self.entries.get(_canonical_or_none(key) or "")
        if entry is None:
            return 0
        return len(entry.get("rounds", [])) or 1

    def add_round(self, key: str, stats: dict[str, Any]) -> str:
        """Add one measurement round of ``key``; the entry shows the round with the median estimate (lower median).

        Returns the canonical key.
        """
        canonical = _canonical(key, lambda msg: FaceNASError(f"{key!r}: {msg}"))
        old = self.entries.get(canonical)
        kept = LATENCY_FIELDS + OPTIONAL_LATENCY_FIELDS
        rounds = [] if old is None else [dict(r) for r in old.get("rounds", [{f: old[f] for f in kept if f in old}])]
        rounds.append(_latency_entry(stats))
        if len(rounds) == 1:
            return self.add(canonical, rounds[0])
        field = ESTIMATORS[self.estimator]
        chosen = sorted(rounds, key=lambda r: r[field])[(len(rounds) - 1) // 2]
        self.add(canonical, chosen)
        self.entries[canonical]["rounds"] = rounds
        return canonical

    def skip(self, key: str, reason: str, **info: Any) -> None:
        """Record that the profiler skipped ``key`` and why (shown when the key is looked up)."""
        canonical = _canonical(key, lambda msg: FaceNASError(f"{key!r}: {msg}"))
        self.skipped[canonical] = {"reason": reason, **info}

    def add_network(self, name: str, arch: dict[str, Any], stats: dict[str, Any], role: str = "validate") -> None:
        """Store a whole network measured end to end (``stats`` from ``measure_interleaved``)."""
        record = {"arch": arch, "role": role, "measured_ms": float(stats["measured_ms"]),
                  "rounds_ms": [float(v) for v in stats["rounds_ms"]], "spread": float(stats["spread"]),
                  "date": now_iso(), **({"load": stats["load"]} if stats.get("load") is not None else {})}
        problem = _network_problem(record)
        if problem:
            raise ValueError(f"network {name}: {problem}")
        self.networks[name] = record

    def set_calibration(self, calibration: Calibration | float, offset_ms: float = 0.0, **info: Any) -> None:
        """Store a calibration in the metadata (call :meth:`save` to keep it).

        Args:
            calibration: a fitted :class:`~latency.calibration.Calibration`, or a scale (then ``offset_ms`` is the
                per-network constant: predicted = scale x sum of entries + offset).
            offset_ms: with a scale only.
            **info: how it was fitted (stored with it).
        """
        if not isinstance(calibration, Calibration):
            scale = float(calibration)
            if not (scale > 0 and math.isfinite(scale)) or not math.isfinite(offset_ms):
                raise FaceNASError(f"calibration scale must be a positive number, not {scale} (offset {offset_ms})")
            calibration = Calibration({"time": scale, "network": float(offset_ms)}, "scale+offset")
        calibration.info.update(info)
        self.meta["calibration"] = {**calibration.to_meta(), "date": now_iso()}

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"format": TABLE_FORMAT, "meta": self.meta, "entries": self.entries}
        if self.skipped:
            data["skipped"] = self.skipped
        if self.networks:
            data["networks"] = self.networks
        return data

    def save(self, path: str | os.PathLike | None = None) -> None:
        """Write the table atomically (temporary file, then rename) to ``path`` or the table's own path."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise FaceNASError("this table has no file; pass a path to save()")
        self.meta["updated"] = now_iso()
        atomic_write_json(target, self.to_data())
        self.path = target


# ----------------------------------------------------------------------------------------------- helpers
def _latency_entry(stats: dict[str, Any]) -> dict[str, Any]:
    """An entry's fields from a measurement, with the machine's load average when it was taken (evidence of noise)."""
    entry: dict[str, Any] = {f: (int(stats[f]) if f == "n" else round(float(stats[f]), 6)) for f in LATENCY_FIELDS}
    entry.update({f: round(float(stats[f]), 6) for f in OPTIONAL_LATENCY_FIELDS if stats.get(f) is not None})
    if stats.get("load") is not None:
        entry["load"] = stats["load"]
    if stats.get("drift_factor") is not None:  # the drift anchor's correction (latency.anchor)
        entry["drift_factor"] = float(stats["drift_factor"])
    return entry


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _entry_problem(entry: Any, metric: str) -> str | None:
    """Why an entry is invalid for ``metric``, or ``None``."""
    if not isinstance(entry, dict):
        return "must be an object such as {\"mean_ms\": 1.2, ...}"
    if "rounds" in entry:
        rounds = entry["rounds"]
        if metric != "latency" or not isinstance(rounds, list) or not rounds:
            return "'rounds' must be a non-empty list of measurement rounds"
        for one in rounds:
            problem = _entry_problem(one, metric)
            if problem:
                return f"a round {problem}"
    fields = LATENCY_FIELDS if metric == "latency" else ("value",)
    optional = OPTIONAL_LATENCY_FIELDS if metric == "latency" else ()
    for field in fields + tuple(f for f in optional if f in entry):
        value = entry.get(field)
        if field not in entry:
            return f"lacks {field!r}"
        if field == "n":
            if not _is_int(value) or value < 1:
                return f"'n' must be a positive integer, not {value!r}"
        elif not _is_number(value) or not math.isfinite(value) or value < 0:
            return f"{field!r} must be a non-negative number, not {value!r}"
    return None


def _network_problem(record: Any) -> str | None:
    """Why a ``networks`` record is invalid, or ``None``."""
    if not isinstance(record, dict) or not isinstance(record.get("arch"), dict):
        return "must be an object with an 'arch' architecture object"
    if record.get("role") not in ("validate", "fit"):
        return f"role must be validate or fit, not {record.get('role')!r}"
    value = record.get("measured_ms")
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        return f"'measured_ms' must be a positive number, not {value!r}"
    rounds = record.get("rounds_ms")
    if not isinstance(rounds, list) or not rounds or not all(_is_number(v) and v > 0 for v in rounds):
        return "'rounds_ms' must be a non-empty list of positive numbers"
    return None


def _canonical_or_none(key: str) -> str | None:
    try:
        return format_block(parse_block(key))
    except FaceNASError:
        return None


def _canonical(key: Any, fail: Any) -> str:
    """Canonical spelling of a key that states its input; ``fail(message)`` builds the error otherwise."""
    if not isinstance(key, str):
        raise fail("keys are block names")
    try:
        spec = parse_block(key)
    except FaceNASError as exc:
        raise fail(str(exc)) from None
    if spec.cin is None or spec.size is None:
        raise fail("a table key must state its input tensor, e.g. 3x3_KKConv_64_32x80x80")
    return format_block(spec)


def _line_of(text: str, needle: str) -> int | None:
    """1-based line of the first occurrence of ``needle`` in ``text``."""
    pos = text.find(needle) if text else -1
    return None if pos < 0 else text.count("\n", 0, pos) + 1


class RunLog:
    """Appends timestamped lines to a table's text log (what was measured, skipped and why)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = path.open("a", encoding="utf-8", buffering=1)

    def __call__(self, text: str) -> None:
        self.handle.write(f"{now_iso()} {text}\n")

    def close(self) -> None:
        self.handle.close()
