"""A report for the user's own setup: a TOML file (or a dict of the same shape) -> a validated plan of
:class:`topoverify.reports.default_job.Section` s.

.. code-block:: toml

    title = "My run"                       # optional; also: description = "..."
    [model]                                # optional with [data].scenario (then the scenario's model)
    factory = "mypkg.models:make_model"    # callable(**kwargs) -> nn.Module
    kwargs = {width = 64}
    [data]
    scenario = "circle"                    # a built-in scenario (topoverify.experiments.SCENARIOS), or
    # factory = "mypkg.data:make_batch"    # callable(**kwargs[, seed]) -> (x, y), or -> callable step -> batch
    kwargs = {}
    [loss]
    fn = "mse"                             # "mse" | "cross_entropy" | "module:callable(model, batch) -> scalar"
    [optimizer]
    factory = "torch.optim:SGD"            # callable(params, lr=lr, **kwargs) -> optimizer (a class is fine)
    kwargs = {momentum = 0.9}
    [run]
    rates = [0.01, 0.1]                    # required: learning rates (the base rates with a [schedule])
    steps = 200                            # steps per run (default 100)
    seeds = [0, 1]                         # torch.manual_seed(seed) before the model factory (default [0])
    layers = ["0"]                         # neuron layers to track, by name (default: the first detected)
    every = 10                             # record the topology every `every` steps (default steps // 20)
    sharpness = true                       # T8's lambda_max per step (default true)
    ratios = true                          # observed distance-ratio envelope per step (default true)
    [schedule]                             # optional: topoverify.experiments.schedules.schedule_from_config
    kind = "step_decay"
    step_size = 100
    gamma = 0.1

One section per layer: a rate sweep, or with ``[schedule]`` one scheduled run per base rate (T4). Several
``seeds`` run inside that section, one run per (rate, seed), and the report gives per rate the fraction of seeds
whose topology changed (with its interval) and the onset over seeds. The loss defaults to the scenario's (with ``[data].scenario``) or to ``"mse"``. ``seed`` is also passed to a data
factory (or scenario), and to a model factory that has a ``seed`` parameter (unless its kwargs set it). The seed is set inside ``torch.random.fork_rng``, so
the caller's global RNG is left as it was.

From Python (:func:`topoverify.reports.api.report`) a dict of the same shape may give the callables
themselves instead of ``module:callable`` strings. Where ``module:callable`` is looked up: the config file's directory and the current directory are put at the
front of ``sys.path``, so ``topoverify report --config examples/report_config.toml`` finds
``examples/report_user_model.py`` as ``report_user_model``. Every problem in the file (bad TOML, an unknown
key, a wrong type, a module or callable that does not import) raises
:class:`topoverify.errors.TopoverifyError` here, before anything runs.

Size: ~400 lines — the format reference (this docstring), the validation that names each key in its error, and
the plan the config becomes are one job; split, each would repeat the table of allowed keys.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from topoverify.errors import TopoverifyError
from topoverify.naming import import_named, split_name
from topoverify.reports.default_job import Section

__all__ = ["JobConfig", "load_config", "resolve_callable", "ALLOWED"]

#: the allowed keys of each table ("" = top level)
ALLOWED: dict[str, tuple[str, ...]] = {
    "": ("title", "description", "model", "data", "loss", "optimizer", "run", "schedule"),
    "model": ("factory", "kwargs"),
    "data": ("scenario", "factory", "kwargs"),
    "loss": ("fn",),
    "optimizer": ("factory", "kwargs"),
    "run": ("rates", "steps", "seeds", "layers", "every", "sharpness", "ratios"),
}


def _err(msg: str) -> TopoverifyError:
    return TopoverifyError(f"report config: {msg}")


def _check_keys(table: dict, where: str) -> None:
    extra = sorted(set(table) - set(ALLOWED[where]))
    if extra:
        name = f"[{where}]" if where else "the top level"
        raise _err(f"unknown key{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))} in {name}; "
                   f"allowed: {', '.join(ALLOWED[where])}.")


def _table(cfg: dict, name: str) -> dict:
    t = cfg.get(name, {})
    if not isinstance(t, dict):
        raise _err(f"[{name}] must be a table (got {type(t).__name__}: {t!r}).")
    _check_keys(t, name)
    return t


def _kwargs(t: dict, where: str) -> dict:
    kw = t.get("kwargs", {})
    if not isinstance(kw, dict):
        raise _err(f"[{where}].kwargs must be a table, e.g. kwargs = {{width = 64}} (got {kw!r}).")
    return dict(kw)


def _search_path(base_dir: Path | None) -> None:
    for d in (os.getcwd(), str(base_dir) if base_dir else None):
        if d and d not in sys.path:
            sys.path.insert(0, d)


def resolve_callable(spec: Any, where: str) -> Any:
    """``"package.module:name"`` -> the callable; ``where`` (e.g. ``"[model].factory"``) names the key in the
    messages. Raises TopoverifyError naming the missing module or attribute and the fix."""
    if callable(spec) and not isinstance(spec, str):   # from Python: report({"model": {"factory": fn}})
        return spec
    if not isinstance(spec, str) or ":" not in spec or not all(spec.partition(":")[::2]):
        raise _err(f"{where} must be a string 'module:callable' (e.g. 'mypkg.models:make_model'); got {spec!r}.")
    mod_name, attr = split_name(spec)
    try:
        obj = import_named(mod_name, attr)
    except ModuleNotFoundError as exc:
        missing = exc.name or mod_name
        inside = "" if missing == mod_name or mod_name.startswith(missing + ".") else \
            f" (imported by {mod_name!r})"
        raise _err(f"no module named {missing!r}{inside} (from {where} = {spec!r}): is it installed / on "
                   f"PYTHONPATH? The config file's directory and the current directory are searched.") from None
    except AttributeError:
        raise _err(f"module {mod_name!r} has no attribute {attr!r} (from {where} = {spec!r}); check the "
                   f"name after the ':'.") from None
    except Exception as exc:  # the user's module raised while importing
        raise _err(f"importing {mod_name!r} (from {where} = {spec!r}) raised {type(exc).__name__}: {exc}") from None
    if not callable(obj):
        raise _err(f"{where} = {spec!r} is not callable.")
    return obj


def _pos_int(v: Any, where: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise _err(f"{where} must be an integer >= {minimum} (got {v!r}).")
    return v


def _rates(v: Any) -> list[float]:
    if not isinstance(v, list) or not v or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in v):
        raise _err(f"[run].rates must be a non-empty list of finite positive numbers, e.g. rates = [0.01, 0.1] "
                   f"(got {v!r}).")
    return [float(x) for x in v]


def _seeds(v: Any) -> list[int]:
    v = [v] if isinstance(v, int) and not isinstance(v, bool) else v
    if not isinstance(v, list) or not v or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                   for s in v):
        raise _err(f"[run].seeds must be a non-empty list of integers >= 0, e.g. seeds = [0, 1] (got {v!r}).")
    return list(v)


def _layers(v: Any) -> list:
    if not isinstance(v, list) or not v or not all(isinstance(s, (str, int)) and not isinstance(s, bool)
                                                   for s in v):
        raise _err(f"[run].layers must be a non-empty list of layer names (or indices), e.g. layers = [\"0\"] "
                   f"(got {v!r}).")
    return list(v)


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise _err(f"{where} must be true or false (got {v!r}).")
    return v


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _names(fn, name: str) -> bool:
    """Whether ``fn`` has a parameter called ``name`` (not merely ``**kwargs``)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


@dataclass
class JobConfig:
    """A validated report config (see the module docstring); :meth:`plan` gives the sections."""

    title: str
    description: str
    rates: list[float]
    steps: int
    seeds: list[int]
    layers: list
    every: int
    sharpness: bool
    ratios: bool
    scenario_name: str | None
    data_factory: Any
    data_kwargs: dict
    model_factory: Any
    model_kwargs: dict
    loss_fn: Any
    loss_name: str
    optimizer_cls: Any
    optimizer_kwargs: dict
    optimizer_name: str
    schedule: Any = None
    raw: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The config as given (for the report's config block; a callable given from Python as its
        ``module:qualname``)."""
        return _plain(self.raw)

    def scenario(self, seed: int):
        """The :class:`topoverify.experiments.Scenario` of ``seed`` (built when a section runs)."""
        from topoverify.experiments.scenarios import SCENARIOS, Scenario
        if self.scenario_name is not None:
            make = SCENARIOS[self.scenario_name]
            kw = dict(self.data_kwargs)
            if "seed" not in kw and _accepts(make, "seed"):
                kw["seed"] = seed
            base = make(**kw)
            if self.model_factory is None:
                return base if self.loss_fn is None else _replace(base, loss_fn=self.loss_fn)
            batch, batches = base.batch, base.batches
            loss = self.loss_fn or base.loss_fn
            desc = f"user model {self.model_name} on the {self.scenario_name} scenario's data"
        else:
            kw = dict(self.data_kwargs)
            if "seed" not in kw and _accepts(self.data_factory, "seed"):
                kw["seed"] = seed
            data = self.data_factory(**kw)
            batches = data if callable(data) else None
            batch = data(0) if batches is not None else data
            if not isinstance(batch, (tuple, list)):
                raise TopoverifyError(f"the data factory {self.data_name} returned {type(batch).__name__}; it must "
                                      f"return a batch (x, y) or a callable step -> batch.")
            loss = self.loss_fn
            desc = f"user model {self.model_name} on data {self.data_name}"
        factory, mkw = self.model_factory, dict(self.model_kwargs)
        if "seed" not in mkw and _names(factory, "seed"):   # a factory seeding its own RNG (gpt2) gets the seed
            mkw["seed"] = seed

        def make_model():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = factory(**mkw)
            if not isinstance(model, torch.nn.Module):
                raise TopoverifyError(f"the model factory {self.model_name} returned {type(model).__name__}, not "
                                      f"a torch.nn.Module.")
            return model

        return Scenario(name=f"{self.title} (seed {seed})", make_model=make_model, batch=tuple(batch),
                        loss_fn=loss, description=f"{desc}; loss {self.loss_name}; seed {seed}.",
                        batches=batches, n_perm="auto")

    @property
    def model_name(self) -> str:
        return getattr(self.model_factory, "__qualname__", str(self.model_factory))

    @property
    def data_name(self) -> str:
        return getattr(self.data_factory, "__qualname__", str(self.data_factory))

    def optimizer(self):
        """``make_optimizer(model, lr)`` for :func:`topoverify.experiments.sweep`."""
        cls, kw = self.optimizer_cls, self.optimizer_kwargs

        def make(model, lr):
            return cls(model.parameters(), lr=lr, **kw)
        make.__name__ = self.optimizer_name
        return make

    def plan(self) -> list[Section]:
        """One section per layer; several seeds run inside it (one run per (rate, seed), the report gives the
        statistics over seeds), one seed runs the scenario of that seed as a plain sweep."""
        sections = []
        multi = len(self.seeds) > 1
        first = self.seeds[0]
        for layer in self.layers:
            tag = f"layer {layer}" if layer is not None and len(self.layers) > 1 else ""
            seeds = f"seeds {', '.join(map(str, self.seeds))}" if multi else ""
            shown = ", ".join(t for t in (tag, seeds) if t)
            sections.append(Section(
                key=tag or "config", title=f"{self.title}: {self.optimizer_name}" + (f", {shown}" if shown else ""),
                scenario=lambda: self.scenario(first), optimizer=self.optimizer(),
                rates=tuple(self.rates), steps=self.steps, every=self.every, layer=layer, seed=first,
                ratios=self.ratios, sharpness=self.sharpness, prediction=self.schedule is None,
                schedule=self.schedule, kind="schedule" if self.schedule is not None else "sweep",
                seeds=tuple(self.seeds) if multi else None,
                scenario_for_seed=(lambda s: self.scenario(s)) if multi else None,
                note=f"From the config: {self.description}".strip() if self.description else ""))
        return sections


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if callable(value):
        return f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', repr(value))}"
    return value


def _replace(scenario, **kw):
    import dataclasses
    return dataclasses.replace(scenario, **kw)


def load_config(source: str | os.PathLike | dict) -> JobConfig:
    """A TOML file path or a dict -> :class:`JobConfig`; every problem raises TopoverifyError (module
    docstring)."""
    base_dir = None
    if isinstance(source, dict):
        cfg = source
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise _err(f"no such file {str(path)!r}; give the path of a TOML file (see "
                       f"examples/report_config.toml).")
        try:
            cfg = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise _err(f"{path} is not valid TOML: {exc}") from None
        base_dir = path.resolve().parent
    else:
        raise _err(f"config must be a path to a TOML file or a dict; got {type(source).__name__}.")
    _check_keys(cfg, "")
    _search_path(base_dir)
    title = cfg.get("title", "Topology report")
    desc = cfg.get("description", "")
    if not isinstance(title, str) or not isinstance(desc, str):
        raise _err("title and description must be strings.")
    model, data, loss, opt, run = (_table(cfg, n) for n in ("model", "data", "loss", "optimizer", "run"))
    from topoverify.experiments.scenarios import SCENARIOS
    scen = data.get("scenario")
    if scen is not None and "factory" in data:
        raise _err("[data] takes either scenario = \"...\" or factory = \"module:callable\", not both.")
    if scen is None and "factory" not in data:
        raise _err(f"[data] needs scenario = one of {', '.join(SCENARIOS)}, or factory = \"module:callable\" "
                   f"returning a batch (x, y) or a callable step -> batch.")
    if scen is not None and scen not in SCENARIOS:
        raise _err(f"[data].scenario = {scen!r} is not a built-in scenario; available: {', '.join(SCENARIOS)}.")
    if not model and scen is None:
        raise _err("[model] is required with [data].factory (only a built-in scenario brings its own model): "
                   "[model] factory = \"mypkg.models:make_model\".")
    if model and "factory" not in model:
        raise _err("[model] needs factory = \"module:callable\" (callable(**kwargs) -> nn.Module).")
    model_factory = resolve_callable(model["factory"], "[model].factory") if model else None
    data_factory = resolve_callable(data["factory"], "[data].factory") if "factory" in data else None
    loss_name = loss.get("fn", None if scen is not None else "mse")
    loss_fn = _loss(loss_name) if loss_name is not None else None
    opt_spec = opt.get("factory", "torch.optim:SGD")
    opt_cls = resolve_callable(opt_spec, "[optimizer].factory")
    opt_kw = _kwargs(opt, "optimizer")
    if "lr" in opt_kw:
        raise _err("[optimizer].kwargs must not set lr: the rates come from [run].rates.")
    if "rates" not in run:
        raise _err("[run].rates is required, e.g. rates = [0.01, 0.1].")
    _try_optimizer(opt_cls, opt_spec, opt_kw, _rates(run["rates"])[0])
    steps = _pos_int(run.get("steps", 100), "[run].steps")
    every = _pos_int(run.get("every", max(1, steps // 20)), "[run].every")
    schedule = None
    if "schedule" in cfg:
        if not isinstance(cfg["schedule"], dict):
            raise _err("[schedule] must be a table, e.g. [schedule] kind = \"step_decay\" step_size = 100.")
        from topoverify.experiments.schedules import schedule_from_config
        try:
            schedule = schedule_from_config(dict(cfg["schedule"]))
        except TopoverifyError as exc:
            raise _err(f"[schedule]: {exc}") from None
    kw_name = ", ".join(f"{k}={v}" for k, v in opt_kw.items())
    return JobConfig(
        title=title, description=desc, rates=_rates(run["rates"]), steps=steps, seeds=_seeds(run.get("seeds", [0])),
        layers=_layers(run["layers"]) if "layers" in run else [None], every=every,
        sharpness=_bool(run.get("sharpness", True), "[run].sharpness"),
        ratios=_bool(run.get("ratios", True), "[run].ratios"), scenario_name=scen, data_factory=data_factory,
        data_kwargs=_kwargs(data, "data"), model_factory=model_factory, model_kwargs=_kwargs(model, "model"),
        loss_fn=loss_fn, loss_name=str(loss_name or "the scenario's"), optimizer_cls=opt_cls, optimizer_kwargs=opt_kw,
        optimizer_name=getattr(opt_cls, "__name__", opt_spec) + (f"({kw_name})" if kw_name else ""),
        schedule=schedule, raw=cfg)


def _try_optimizer(cls: Any, spec: str, kwargs: dict, lr: float) -> None:
    """Build the optimizer once on a throwaway parameter, so that a misspelled or mistyped keyword is a config
    error before anything runs (not a failed section)."""
    try:
        cls([torch.nn.Parameter(torch.zeros(1))], lr=lr, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's factory is reported with its key
        raise _err(f"[optimizer]: {spec} cannot be built with kwargs {kwargs}: {type(exc).__name__}: {exc}. "
                   f"Fix [optimizer].kwargs (names and types as the optimizer's constructor takes them).") from None


def _loss(name: Any):
    from topoverify.experiments.scenarios import cross_entropy_loss, mse_loss
    builtin = {"mse": mse_loss, "cross_entropy": cross_entropy_loss}
    if isinstance(name, str) and name in builtin:
        return builtin[name]
    if isinstance(name, str) and ":" in name:
        return resolve_callable(name, "[loss].fn")
    raise _err(f"[loss].fn must be \"mse\", \"cross_entropy\" or \"module:callable\" (callable(model, batch) -> "
               f"scalar tensor); got {name!r}.")
