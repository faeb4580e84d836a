"""A sweep's runs on disk (``sweep(..., out_dir=PATH)``): one JSON record per finished run, written at once,
and read back by a later sweep with the same ``out_dir`` instead of recomputing it.

Layout: ``PATH/runs/lr{index:03d}-seed{seed}-{hash12}.json`` (``index`` the rate's position in ``lrs``) holding
``{"format": "topoverify-run/1", "config_hash", "key": {lr, seed, index, steps}, "status": "ok" | "failed",
"record": RunRecord.to_dict() | RunFailure.to_dict(), "topoverify_version", "written"}``, each written to a
temporary file and moved into place with :func:`os.replace` (atomic: a killed sweep leaves whole records or
none); ``PATH/sweep.json``: the sweep's manifest.

A run's **config hash** is the sha256 of a canonical JSON (sorted keys, exact float repr) of everything that
determines it (:func:`run_config`): the scenario's name, description and a sha256 of the seed's initial
parameters (state_dict, in order: name, dtype, shape, bytes) and of the tensors of ``batch_at(0)``; the
optimizer's name, class and param-group hyperparameters (built on the initial model, params excluded); the
rate, seed, steps and every measurement option; the schedule's name and its rates; topoverify's and torch's
versions; every batch the run will use (``batch_at(t)``, t = 0..steps); and a *probe*: one real step of the
run's optimizer and loss from the seed's initial state, whose loss and per-parameter sums after the step
(8 significant digits, so that round-off from another thread count does not matter) change with the loss
function, the optimizer's behaviour or hooks a factory installs. What a probe cannot see (code that changes
the run only after its first step) is not seen: give such a sweep a fresh ``out_dir``.

:func:`run_record_from_dict`, :func:`snapshot_from_dict` and :func:`run_failure_from_dict` invert ``to_dict``
(the derived keys it adds are dropped; "nan"/"inf"/"-inf" become floats, tuples tuples, diagrams float64
arrays).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import topoverify
from topoverify.errors import TopoverifyError
from topoverify.experiments.snapshots import TopologySnapshot
from topoverify.experiments.sweep_result import RunFailure, RunRecord
from topoverify.formatting import jsonable

__all__ = ["FORMAT", "fingerprint", "optimizer_config", "run_config", "config_hash", "check_out_dir", "record_path",
           "write_run", "write_manifest", "read_runs", "run_record_from_dict", "snapshot_from_dict",
           "run_failure_from_dict"]

FORMAT = "topoverify-run/1"
_SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# ---------------------------------------------------------------------------------------------- hashing

def _feed(h, obj: Any) -> None:
    """Update the sha256 ``h`` with the bytes of tensors/arrays in ``obj`` (nested tuples, lists, dicts)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"tensor {t.dtype} {tuple(obj.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        h.update(f"array {obj.dtype} {obj.shape};".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, dict):
        for k, v in obj.items():
            h.update(f"key {k!r};".encode())
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"seq {len(obj)};".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"value {obj!r};".encode())


def fingerprint(obj: Any) -> str:
    """sha256 (hex) of the tensors in ``obj``: a state_dict, a batch, a neuron cloud."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _canonical(value: Any) -> Any:
    """JSON-ready with a stable text for objects JSON does not know (their repr)."""
    value = jsonable(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def optimizer_config(opt: torch.optim.Optimizer, name: str) -> dict:
    """The optimizer's name, class and param-group hyperparameters (params excluded)."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return {"name": name, "class": f"{type(opt).__module__}.{type(opt).__qualname__}", "param_groups": groups}


def config_hash(config: dict) -> str:
    """sha256 (hex) of the canonical JSON of ``config``."""
    text = json.dumps(_canonical(config), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def versions() -> dict:
    return {"topoverify": topoverify.__version__, "torch": torch.__version__}


def run_config(scenario: dict, optimizer: dict, lr: float, seed: int | None, options: dict,
               schedule_rates: list[float] | None) -> dict:
    """Everything that determines one run: ``scenario`` (name, description, params and batch0 fingerprints),
    ``optimizer`` (:func:`optimizer_config`), the rate, the seed, the measurement ``options`` (steps included),
    the schedule's rates and the versions of topoverify and torch."""
    return {"scenario": scenario, "optimizer": optimizer, "lr": float(lr), "seed": seed, "options": options,
            "schedule_rates": schedule_rates, "versions": versions()}


# ----------------------------------------------------------------------------------------------- writing

def record_path(out_dir: Path, index: int, seed: int | None, digest: str) -> Path:
    return Path(out_dir) / "runs" / f"lr{index:03d}-seed{'none' if seed is None else seed}-{digest[:12]}.json"


def _atomic_write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_run(path: Path, digest: str, key: dict, result: RunRecord | RunFailure) -> None:
    """Write one finished run (a record or a failure) atomically to ``path``."""
    _atomic_write(path, {"format": FORMAT, "config_hash": digest, "key": _canonical(key),
                         "status": "ok" if isinstance(result, RunRecord) else "failed",
                         "record": result.to_dict(), "topoverify_version": topoverify.__version__,
                         "written": _now()})


def write_manifest(out_dir: Path, manifest: dict) -> None:
    _atomic_write(Path(out_dir) / "sweep.json", {"format": "topoverify-sweep/1", **_canonical(manifest),
                                                 **versions(), "written": _now()})


def check_out_dir(out_dir) -> Path:
    p = Path(os.fspath(out_dir))
    if p.exists() and not p.is_dir():
        raise TopoverifyError(f"out_dir {str(p)!r} exists and is not a directory; give a directory path.")
    try:
        (p / "runs").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TopoverifyError(f"cannot create out_dir {str(p)!r}: {exc}. Give a writable directory.") from None
    return p


# ----------------------------------------------------------------------------------------------- reading

def _check_record(rec: RunRecord, lr: float, seed: int | None, steps: int) -> None:
    """A record read back must be the run it is filed as, and whole."""
    if rec.lr != lr or rec.seed != seed or rec.steps != steps:
        raise ValueError(f"it holds the run (lr={rec.lr}, seed={rec.seed}, steps={rec.steps}), not the one its "
                         f"config hash names (lr={lr}, seed={seed}, steps={steps})")
    if not rec.snapshots or len(rec.loss) != rec.steps_run or rec.steps_run > rec.steps:
        raise ValueError(f"an incomplete record ({len(rec.snapshots)} snapshots, {len(rec.loss)} losses for "
                         f"{rec.steps_run} steps run)")


def read_runs(out_dir: Path, wanted: dict[str, tuple]) -> dict[str, tuple[RunRecord, Path]]:
    """The ``status: ok`` records in ``out_dir/runs`` whose config hash is a key of ``wanted`` (hash -> the
    run's (lr, seed, steps)), as hash -> (record, file). Unreadable, truncated, foreign or inconsistent files
    (a record that is not the run its hash names, or is incomplete) are skipped with a warning naming them;
    other configurations are left alone."""
    found: dict[str, tuple[RunRecord, Path]] = {}
    for path in sorted((Path(out_dir) / "runs").glob("*.json")):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} record")
            digest = data["config_hash"]
            if digest not in wanted or data["status"] != "ok":
                continue
            rec = run_record_from_dict(data["record"])
            _check_record(rec, *wanted[digest])
            found[digest] = (rec, path)
        except Exception as exc:  # noqa: BLE001 - a bad file is skipped, never a crash
            warnings.warn(f"sweep out_dir: skipping {path} ({type(exc).__name__}: {exc}); the run it may hold "
                          f"is computed again.", RuntimeWarning, stacklevel=3)
    return found


def _num(v: Any) -> Any:
    """Invert :func:`jsonable` on numbers: the strings "nan"/"inf"/"-inf" back to floats, recursively."""
    if isinstance(v, str):
        return _SPECIAL.get(v, v)
    if isinstance(v, list):
        return [_num(x) for x in v]
    return v


def _fields(cls, d: dict, text: set[str]) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in d
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{cls.__name__} record lacks {missing}")
    return {k: (v if k in text else _num(v)) for k, v in d.items() if k in names}


def _tuple(v):
    return None if v is None else tuple(v)


def snapshot_from_dict(d: dict) -> TopologySnapshot:
    """Inverse of :meth:`TopologySnapshot.to_dict`."""
    kw = _fields(TopologySnapshot, d, set())
    for k in ("betti", "max_log_persistence", "betti_low", "betti_high"):
        if k in kw:
            kw[k] = _tuple(kw[k])
    if kw.get("diagrams") is not None:
        kw["diagrams"] = [np.asarray(dg, dtype=np.float64).reshape(-1, 2) for dg in kw["diagrams"]]
    return TopologySnapshot(**kw)


def run_record_from_dict(d: dict) -> RunRecord:
    """Inverse of :meth:`RunRecord.to_dict` (its derived keys are dropped)."""
    kw = _fields(RunRecord, d, {"prediction_reason", "divergence", "eos_quantity", "sharpness_reason", "schedule"})
    kw["snapshots"] = [snapshot_from_dict(s) for s in d["snapshots"]]
    return RunRecord(**kw)


def run_failure_from_dict(d: dict) -> RunFailure:
    """Inverse of :meth:`RunFailure.to_dict`."""
    return RunFailure(**_fields(RunFailure, d, {"error", "kind", "traceback"}))
