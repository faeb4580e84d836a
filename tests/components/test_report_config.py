"""``topoverify.reports.config``: a TOML file or dict -> a validated plan (unknown keys, wrong types, missing
modules/callables all raise before anything runs; seeds; schedules), and ``topoverify.reports.api.report(dict)``
from Python on a tiny config."""

import json
import pathlib

import pytest
import torch

from topoverify.errors import TopoverifyError
from topoverify.reports.config import ALLOWED, load_config

ROOT = pathlib.Path(__file__).resolve().parents[2]

USER_MODULE = '''
import torch
from torch import nn
CALLS = []

def make_model(width=6):
    return nn.Sequential(nn.Linear(1, width), nn.Tanh(), nn.Linear(width, 1)).double()

def make_data(n=20, seed=0):
    CALLS.append(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    return x, torch.sin(x)

def make_stream(n=20):
    def batch(step):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(n, 1, generator=g, dtype=torch.float64)
        return x, torch.sin(x)
    return batch

NOT_CALLABLE = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = f"h5_user_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _cfg(mod, **over):
    cfg = {"title": "tiny", "model": {"factory": f"{mod}:make_model", "kwargs": {"width": 6}},
           "data": {"factory": f"{mod}:make_data"}, "loss": {"fn": "mse"},
           "optimizer": {"factory": "torch.optim:SGD"}, "run": {"rates": [0.01], "steps": 3}}
    for k, v in over.items():
        if v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    return cfg


def _raises(cfg, *needles):
    with pytest.raises(TopoverifyError) as ei:
        load_config(cfg)
    for n in needles:
        assert n in str(ei.value), (n, str(ei.value))
    return str(ei.value)


def test_unknown_keys_are_refused_with_the_allowed_ones(user_module):
    msg = _raises(_cfg(user_module, modle={}), "'modle'", "allowed:")
    assert all(k in msg for k in ALLOWED[""])
    _raises(_cfg(user_module, run={"rates": [0.1], "stpes": 3}), "'stpes'", "[run]", "steps")
    _raises(_cfg(user_module, optimizer={"factory": "torch.optim:SGD", "kwarg": {}}), "'kwarg'", "kwargs")


@pytest.mark.parametrize("run, needle", [
    ({"rates": "0.1"}, "[run].rates"), ({"rates": []}, "[run].rates"), ({"rates": [0.1, -1]}, "[run].rates"),
    ({"rates": [0.1], "steps": 0}, "[run].steps"), ({"rates": [0.1], "steps": 2.5}, "[run].steps"),
    ({"rates": [0.1], "seeds": [-1]}, "[run].seeds"), ({"rates": [0.1], "seeds": ["a"]}, "[run].seeds"),
    ({"rates": [0.1], "every": True}, "[run].every"), ({"rates": [0.1], "layers": "0"}, "[run].layers"),
    ({"rates": [0.1], "sharpness": "yes"}, "[run].sharpness"), ({"steps": 3}, "[run].rates is required")])
def test_wrong_types_name_the_key(user_module, run, needle):
    _raises(_cfg(user_module, run=run), needle)


def test_missing_module_or_callable_names_it_and_the_fix(user_module):
    msg = _raises(_cfg(user_module, model={"factory": "h5_no_such_pkg.models:make_model"}),
                  "no module named 'h5_no_such_pkg'", "[model].factory", "PYTHONPATH")
    assert "h5_no_such_pkg.models:make_model" in msg
    _raises(_cfg(user_module, data={"factory": f"{user_module}:make_dta"}), "make_dta", "[data].factory")
    _raises(_cfg(user_module, optimizer={"factory": "torch.optim:SGDD"}), "SGDD", "[optimizer].factory")
    _raises(_cfg(user_module, loss={"fn": f"{user_module}:NOT_CALLABLE"}), "not callable", "[loss].fn")
    _raises(_cfg(user_module, loss={"fn": "l2"}), "[loss].fn", "mse")
    _raises(_cfg(user_module, model={"factory": "make_model"}), "module:callable")


def test_structure_errors(user_module):
    _raises(_cfg(user_module, data={"scenario": "circle", "factory": f"{user_module}:make_data"}), "not both")
    _raises(_cfg(user_module, data={"scenario": "circel"}), "circel", "circle")
    _raises(_cfg(user_module, model=None), "[model] is required")
    _raises(_cfg(user_module, optimizer={"factory": "torch.optim:SGD", "kwargs": {"lr": 0.1}}), "lr")
    _raises(_cfg(user_module, model={"factory": f"{user_module}:make_model", "kwargs": [1]}), "[model].kwargs")


def test_toml_file_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("title = \n")
    with pytest.raises(TopoverifyError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(TopoverifyError, match="no such file"):
        load_config(tmp_path / "missing.toml")


def test_example_config_loads_from_its_own_directory():
    """examples/report_config.toml names report_user_model:..., found because the config's directory is
    put on sys.path."""
    job = load_config(ROOT / "examples" / "report_config.toml")
    assert job.seeds == [0, 1] and len(job.plan()) == 1 and job.plan()[0].seeds == (0, 1)
    assert job.optimizer_name == "SGD(momentum=0.9)"


def test_seeds_set_the_initialisation_and_reach_the_data_factory(user_module):
    import importlib
    mod = importlib.import_module(user_module)
    job = load_config(_cfg(user_module, run={"rates": [0.01], "steps": 2, "seeds": [3, 4]}))
    plan = job.plan()
    # one section runs both seeds (issue 13): the sweep draws each seed's scenario from scenario_for_seed
    assert len(plan) == 1 and plan[0].seeds == (3, 4) and plan[0].seed == 3
    first = [next(sc.model().parameters()).detach() for sc in (plan[0].scenario(), plan[0].scenario_for_seed(3))]
    assert torch.equal(*first)   # the rates and the per-layer table are predicted at the first seed
    state = torch.random.get_rng_state()
    s3, s3b, s4 = job.scenario(3), job.scenario(3), job.scenario(4)
    w = [next(s.model().parameters()).detach().clone() for s in (s3, s3b, s4)]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is left alone
    assert 3 in mod.CALLS and 4 in mod.CALLS
    assert not torch.equal(s3.batch[0], s4.batch[0])
    single = load_config(_cfg(user_module, run={"rates": [0.01], "seeds": 7}))
    assert single.seeds == [7]


def test_one_section_per_layer_with_every_seed_and_the_default_plan_seeds(user_module):
    from topoverify.reports.default_job import SIMPLIFICATION_SEEDS, default_plan, slug
    job = load_config(_cfg(user_module, run={"rates": [0.01], "seeds": [1, 2], "layers": ["0", "2"]}))
    plan = job.plan()
    assert [s.key for s in plan] == ["layer 0", "layer 2"] and all(s.seeds == (1, 2) for s in plan)
    single = load_config(_cfg(user_module, run={"rates": [0.01], "seeds": [5]})).plan()
    assert len(single) == 1 and single[0].seeds is None and single[0].seed == 5   # one seed: a plain sweep
    full = {s.key: s for s in default_plan(quick=False)}
    quick = {s.key: s for s in default_plan(quick=True)}
    assert full["simplification/SGD"].seeds == SIMPLIFICATION_SEEDS["full"] == (1, 2, 3, 4)
    assert len(full["simplification/SGD"].rates) == 2
    assert all(s.seeds is None for s in quick.values())   # the quick form stays single-seed
    assert slug("circle/SGD") == "circle-SGD" and slug("layer 0") == "layer-0" and slug("//") == "section"


def test_run_options_give_each_section_its_run_folder(tmp_path):
    from topoverify.reports.api import _options
    from topoverify.reports.default_job import RunOptions
    kw = RunOptions(workers=3, out_dir=str(tmp_path)).sweep_kwargs("digits/Adam")
    assert kw == {"executor": "local", "workers": 3, "ray_address": None, "resume": True,
                  "out_dir": str(tmp_path / "runs" / "digits-Adam")}
    assert RunOptions(fresh=True).sweep_kwargs("x") == {"executor": "local", "workers": 1, "ray_address": None,
                                                       "resume": False}
    pytest.importorskip("ray")
    assert _options(1, "", False, tmp_path).ray_address is None
    opts = _options(2, "ray://head:10001", True, tmp_path)
    assert (opts.executor, opts.ray_address, opts.fresh, opts.workers) == ("ray", "ray://head:10001", True, 2)
    with pytest.raises(TopoverifyError, match="ray must be"):
        _options(1, 3, False, tmp_path)


def test_scenario_data_and_step_streams(user_module):
    job = load_config({"data": {"scenario": "circle", "kwargs": {"n": 8}}, "run": {"rates": [0.1]}})
    sc = job.scenario(0)
    assert sc.name == "circle" and job.loss_name == "the scenario's"
    stream = load_config(_cfg(user_module, data={"factory": f"{user_module}:make_stream"}))
    sc = stream.scenario(0)
    assert sc.batches is not None and not torch.equal(sc.batch_at(0)[0], sc.batch_at(1)[0])


def test_schedule_table(user_module):
    job = load_config(_cfg(user_module, schedule={"kind": "step_decay", "step_size": 2, "gamma": 0.5}))
    assert "step_decay" in job.schedule.name and all(s.kind == "schedule" for s in job.plan())
    _raises(_cfg(user_module, schedule={"kind": "sawtooth"}), "[schedule]", "sawtooth")
    _raises(_cfg(user_module, schedule={"kind": "step_decay", "step_size": -1}), "[schedule]")
    _raises(_cfg(user_module, schedule="step_decay"), "[schedule] must be a table")


def test_api_report_from_a_dict(user_module, tmp_path):
    """topoverify.reports.api.report(dict) runs a tiny config and writes every file; a scheduled config gets
    one scheduled run per base rate."""
    from topoverify.reports.api import report
    from topoverify.reports.schema import validate_report
    cfg = _cfg(user_module, run={"rates": [0.01, 0.05], "steps": 4, "every": 2, "sharpness": False})
    res = report(cfg, out_dir=tmp_path / "r", progress=False)
    assert res.ok and res.errors == []
    assert [r.rate for r in res.rows] == [0.01, 0.05]
    assert all(r.phase in ("preserving", "breakdown-possible") for r in res.rows)
    assert res.files.html.exists() and res.files.markdown.exists() and res.files.figures
    d = json.loads(res.files.json.read_text())
    validate_report(d)
    assert d["title"] == "tiny" and d["config"]["run"]["rates"] == [0.01, 0.05]
    assert "section_seconds" in d["config"]
    assert str(res.files.html) in str(res)
    with pytest.raises(TopoverifyError, match="--quick"):
        report(cfg, quick=True, out_dir=tmp_path / "q")
    sched = _cfg(user_module, run={"rates": [0.05], "steps": 4, "every": 2, "sharpness": False},
                 schedule={"kind": "step_decay", "step_size": 2, "gamma": 0.5})
    res = report(sched, out_dir=tmp_path / "s", progress=False)
    assert res.ok, res.errors
    d = json.loads(res.files.json.read_text())
    assert [s["kind"] for s in d["sections"]] == ["schedule"]


class _Recorder:
    """Stands in for the Report in run_plan's unit test: records what it is given."""

    def __init__(self):
        self.errors, self.findings = [], []

    def add_error(self, where, message):
        self.errors.append((where, message))

    def add_finding(self, text):
        self.findings.append(text)


def test_run_plan_records_a_failing_section_and_goes_on(user_module):
    from topoverify.reports.default_job import Section, run_plan

    def broken():
        raise RuntimeError("user data loader exploded")

    plan = [Section(key="broken", title="t", scenario=broken, optimizer=None, rates=(0.1,)),
            Section(key="skipped", title="t", scenario=broken, optimizer=None, skip="skipped: no data here")]
    rec = _Recorder()
    outs = run_plan(plan, rec, progress=False)
    assert [o.key for o in outs] == ["broken", "skipped"]
    assert rec.errors == [("broken", "RuntimeError: user data loader exploded")]
    assert outs[1].skipped and rec.findings == ["skipped: skipped: no data here"]


def test_default_plan_notes_a_missing_scikit_learn(monkeypatch):
    from topoverify.reports import default_job
    monkeypatch.setattr(default_job, "_has_sklearn", lambda: False)
    plan = default_job.default_plan(quick=False)
    digits = [s for s in plan if s.key.startswith("digits/")]
    assert len(digits) == 2 and all("scikit-learn" in s.skip for s in digits)
    quick = default_job.default_plan(quick=True)
    assert [s.key for s in quick] == [s.key for s in plan]
    assert all(s.skip for s in quick if s.key.startswith("digits/"))
    # both phases in the quick form: the preserving rate, and the schedule starting at the simplifying rate
    from topoverify.experiments.simplification import SIMPLIFICATION_RATES
    sched = next(s for s in quick if s.kind == "schedule")
    assert sched.rates == (SIMPLIFICATION_RATES["simplify"],)


def test_a_dict_from_python_may_give_callables(user_module):
    import importlib
    mod = importlib.import_module(user_module)
    job = load_config({"model": {"factory": mod.make_model}, "data": {"factory": mod.make_data},
                       "optimizer": {"factory": torch.optim.Adam}, "run": {"rates": [1e-3]}})
    assert job.optimizer_name == "Adam" and job.loss_name == "mse"
    assert job.to_dict()["model"]["factory"] == f"{user_module}:make_model"
    json.dumps(job.to_dict())


def test_training_state_words():
    from types import SimpleNamespace as R
    from topoverify.reports.findings import training_state
    flat = [1.0] + [0.05] * 20
    assert training_state(R(diverged=True, final_loss=float("nan"), loss=[1.0])) == "diverged"
    assert training_state(R(diverged=False, final_loss=0.05, loss=flat)) == "settled"
    falling = [1.0 * 0.9 ** t for t in range(40)]
    assert training_state(R(diverged=False, final_loss=falling[-1], loss=falling)) == "converging"
    assert training_state(R(diverged=False, final_loss=0.8, loss=[1.0, 0.95, 0.9, 0.8])) == "decreasing"
    assert training_state(R(diverged=False, final_loss=2.0, loss=[1.0, 1.5, 2.0])) == "not decreasing"


@pytest.mark.parametrize("kwargs", [{"momentom": 0.9}, {"momentum": "high"}])
def test_a_misspelled_optimizer_keyword_is_a_config_error(kwargs):
    """Review finding: such a keyword only failed when its section ran (exit 3); now it is refused up front."""
    cfg = {"data": {"scenario": "circle"}, "optimizer": {"factory": "torch.optim:SGD", "kwargs": kwargs},
           "run": {"rates": [0.01], "steps": 2}}
    with pytest.raises(TopoverifyError, match=r"\[optimizer\].*kwargs"):
        load_config(cfg)


def test_a_scheduled_config_with_seeds_runs_each_seed_and_resumes(tmp_path):
    """[schedule] with several seeds: one scheduled run per (base rate, seed), each its own report section with
    its seed; a second call reads both runs back."""
    from topoverify.reports.api import report
    cfg = {"title": "sched", "data": {"scenario": "circle", "kwargs": {"n": 12}},
           "run": {"rates": [0.05], "steps": 3, "every": 3, "seeds": [0, 1], "sharpness": False, "ratios": False},
           "schedule": {"kind": "step_decay", "step_size": 2, "gamma": 0.5}}
    res = report(cfg, out_dir=tmp_path, progress=False)
    assert res.ok, res.errors
    assert [(r.rate, r.seed) for r in res.rows] == [(0.05, 0), (0.05, 1)]
    d = json.loads(res.files.json.read_text())
    assert [s["kind"] for s in d["sections"]] == ["schedule", "schedule"]
    assert [s["title"].endswith(f"seed {i})") for i, s in enumerate(d["sections"])] == [True, True]
    assert res.outcomes[0].n_computed == 2
    again = report(cfg, out_dir=tmp_path, progress=False)
    assert (again.outcomes[0].n_resumed, again.outcomes[0].n_computed) == (2, 0)
