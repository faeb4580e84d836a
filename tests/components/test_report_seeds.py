"""The report over seeds, workers, Ray and resumable runs (issue 13, items 1-2 in the report and the CLI).

One small config (circle scenario, 16 neurons, a preserving and a diverging rate, 3 seeds, 10 steps) is run
once by the module; the tests read its HTML/Markdown/JSON (fraction changed with its Clopper-Pearson interval,
the max lr·K distribution, the onset per seed, the phase diagram over seeds), call the CLI again on the same
folder (every run read back, faster) and with ``--fresh`` (every run recomputed), and check ``--ray`` without Ray
(exit 2 before anything runs). A tiny report in a process pool (``--workers 2``) and on Ray are ``slow``
(starting the workers or a local Ray instance takes ~30 s on 2 cores).
"""

from __future__ import annotations

import copy
import json
import sys

import pytest
from scipy import stats

from topoverify.cli.main import main
from topoverify.errors import TopoverifyError
from topoverify.reports.api import report
from topoverify.reports.schema import SCHEMA_VERSION, validate_report

pytest.importorskip("matplotlib")

SEEDS = [0, 1, 2]
RATES = [0.05, 3.0]   # lr·K ~ 0.03 (preserving) and ~ 1.6 η* (the runs blow up and change)
TOML = f"""
title = "seeds"
[data]
scenario = "circle"
kwargs = {{n = 16}}
[run]
rates = {RATES}
steps = 10
every = 5
seeds = {SEEDS}
sharpness = false
ratios = false
"""


def _cp(k: int, n: int) -> tuple[float, float]:
    """Clopper-Pearson 95% computed here from the beta quantiles (independent of seed_stats)."""
    low = 0.0 if k == 0 else stats.beta.ppf(0.025, k, n - k + 1)
    high = 1.0 if k == n else stats.beta.ppf(0.975, k + 1, n - k)
    return low, high


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "seeds.toml"
    path.write_text(TOML)
    return path


@pytest.fixture(scope="module")
def first(config_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds") / "rep"
    res = report(config_file, out_dir=out, progress=False)
    return out, res


def _data(out) -> dict:
    d = json.loads((out / "report.json").read_text())
    validate_report(d)
    return d


def test_one_section_runs_every_seed_and_rate(first):
    out, res = first
    assert res.ok, res.errors
    assert len(res.outcomes) == 1 and res.outcomes[0].n_computed == len(SEEDS) * len(RATES)
    assert res.outcomes[0].n_resumed == 0
    assert sorted((r.rate, r.seed) for r in res.rows) == sorted((lr, s) for lr in RATES for s in SEEDS)
    d = _data(out)
    assert d["schema_version"] == SCHEMA_VERSION == "1.1"
    sec = d["sections"][0]["data"]
    assert sec["seeds"] == SEEDS and sec["failures"] == [] and sec["n_computed"] == 6
    assert sorted(r["seed"] for r in d["summary"]) == sorted(SEEDS * 2)
    # each seed runs its own initial state: seed 0 the evenly spaced circle, the others jittered
    assert len({r["max_lrK"] for r in sec["runs"] if r["lr"] == RATES[0]}) == len(SEEDS)


def test_fraction_changed_has_its_clopper_pearson_interval(first):
    out, _ = first
    sec = _data(out)["sections"][0]["data"]
    assert [st["lr"] for st in sec["rate_stats"]] == RATES
    for st in sec["rate_stats"]:
        changed = sum(r["verdict"] == "changed" for r in sec["runs"] if r["lr"] == st["lr"])
        assert st["n_runs"] == len(SEEDS) and st["n_changed"] == changed
        iv = st["fraction_interval"]
        assert iv["method"] == "Clopper-Pearson 95%"
        assert (iv["low"], iv["high"]) == pytest.approx(_cp(changed, len(SEEDS)))
        assert iv["low"] <= st["fraction_changed"] <= iv["high"]
        m = st["max_lrK_interval"]   # distribution-free interval of the median, its coverage stated
        assert m["low"] <= st["max_lrK_median"] <= m["high"] and 0 < m["level"] < 1 and "coverage" in m["method"]
    low = sec["rate_stats"][0]
    assert low["n_changed"] == 0 and low["max_lrK_range"][1] < 1   # the preserving rate: lr·K < 1, kept


def test_onset_distribution_and_eta_star_over_seeds(first):
    out, _ = first
    sec = _data(out)["sections"][0]["data"]
    dist = sec["onset_distribution"]
    assert dist["seeds"] == SEEDS
    for s in SEEDS:
        runs = sorted((r for r in sec["runs"] if r["seed"] == s), key=lambda r: r["lr"])
        expected = next((r["lr"] for r in runs if r["verdict"] == "changed"), None)
        assert dist["onset"][str(s)] == expected
        assert dist["eta_star"][str(s)] > 0 and dist["eta_star_certified"][str(s)] <= dist["eta_star"][str(s)]
    lo, hi = dist["eta_star_range"]
    assert lo <= dist["eta_star_median"] <= hi and lo < hi   # the jittered seeds predict different η*


def test_html_and_markdown_show_the_statistics(first):
    out, _ = first
    d = _data(out)
    iv = d["sections"][0]["data"]["rate_stats"][0]["fraction_interval"]
    for name in ("report.html", "report.md"):
        text = (out / name).read_text()
        for needle in ("Per rate over the seeds", "Clopper-Pearson 95%", "empirical onset per seed",
                       "Predicted eta* and empirical onset over the seeds", "runs read back", "order statistics",
                       f"[0, {float(iv['high']):.4g}]"):
            assert needle in text, (name, needle)
    assert any("over 3 seeds" in f and "Clopper-Pearson" in f for f in d["findings"])


def test_phase_diagram_over_seeds(first):
    out, _ = first
    figs = {f["file"]: f["caption"] for f in _data(out)["sections"][0]["figures"]}
    cap = figs["figures/s1_sweep_phase.png"]
    assert cap.startswith("Read:") and "Clopper-Pearson" in cap and "onset" in cap
    png = (out / "figures" / "s1_sweep_phase.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(png) < 200_000
    # the per-run figures show the first seed's runs and say so
    assert all("Seed 0's runs" in c for f, c in figs.items() if "phase" not in f)


def test_a_1_0_document_still_validates_and_problems_are_located(first):
    out, _ = first
    d = _data(out)
    old = copy.deepcopy(d)
    old["schema_version"] = "1.0"
    for row in old["summary"]:
        row.pop("seed")
    for sec in old["sections"]:
        for k in ("seeds", "executor", "workers", "n_resumed", "n_computed", "runs_dir", "failures", "rate_stats",
                  "onset_distribution"):
            sec["data"].pop(k, None)
    validate_report(old)
    bad = copy.deepcopy(d)
    bad["sections"][0]["data"]["rate_stats"][1]["fraction_interval"].pop("method")
    with pytest.raises(TopoverifyError, match=r"at \$\.sections\[0\]\.data\.rate_stats\[1\]\.fraction_interval:"):
        validate_report(bad)
    bad = copy.deepcopy(d)
    bad["sections"][0]["data"]["failures"] = [{"lr": 0.1, "seed": 0, "error": "x", "kind": "exploded"}]
    with pytest.raises(TopoverifyError, match=r"at \$\.sections\[0\]\.data\.failures\[0\]\.kind:"):
        validate_report(bad)


def test_a_second_call_reads_the_runs_back(first, config_file, capsys):
    out, res = first
    before = {(r["lr"], r["seed"]): r["max_lrK"] for r in _data(out)["sections"][0]["data"]["runs"]}
    assert main(["report", "--config", str(config_file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    d = _data(out)
    sec = d["sections"][0]["data"]
    assert sec["n_resumed"] == 6 and sec["n_computed"] == 0
    assert "6 runs read back, 0 computed" in printed
    assert {(r["lr"], r["seed"]): r["max_lrK"] for r in sec["runs"]} == before


def test_fresh_recomputes(first, config_file, capsys):
    out, _ = first
    assert main(["report", "--config", str(config_file), "--out", str(out), "--fresh"]) == 0
    assert "0 runs read back, 6 computed (in this process)" in capsys.readouterr().out
    sec = _data(out)["sections"][0]["data"]
    assert sec["n_resumed"] == 0 and sec["n_computed"] == 6 and sec["workers"] == 1


def test_ray_missing_exits_2_before_anything_runs(config_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)   # `import ray` raises ImportError
    out = tmp_path / "r"
    assert main(["report", "--config", str(config_file), "--out", str(out), "--ray"]) == 2
    err = capsys.readouterr().err
    assert "pip install" in err and "ray" in err
    assert not out.exists()
    with pytest.raises(TopoverifyError, match="pip install"):
        report(config_file, out_dir=out, ray="ray://nowhere:10001")


@pytest.mark.parametrize("argv, needle", [(["--workers", "0"], "--workers"), (["--workers", "two"], "--workers")])
def test_bad_workers_is_a_usage_error(argv, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["report", "--quick", "--out", str(tmp_path), *argv])
    assert exc.value.code == 2 and needle in capsys.readouterr().err
    with pytest.raises(TopoverifyError, match="workers"):
        report(out_dir=tmp_path, workers=0)


def _tiny(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TOML.replace("rates = [0.05, 3.0]", "rates = [0.05]").replace("steps = 10", "steps = 4")
                   .replace("seeds = [0, 1, 2]", "seeds = [0, 1]"))
    return cfg


@pytest.mark.slow
def test_a_tiny_report_in_a_process_pool(tmp_path, capsys):
    """The config's callables reach the worker processes (~30 s on 2 cores: each worker imports torch)."""
    assert main(["report", "--config", str(_tiny(tmp_path)), "--out", str(tmp_path / "r"), "--workers", "2"]) == 0
    assert "0 runs read back, 2 computed (local process pool, 2 workers)" in capsys.readouterr().out
    sec = _data(tmp_path / "r")["sections"][0]["data"]
    assert sec["executor"] == "local" and sec["workers"] == 2 and sec["onset_distribution"]["seeds"] == [0, 1]


@pytest.mark.slow
def test_a_tiny_report_on_ray(tmp_path, capsys):
    """``--ray`` without an address: a local Ray instance (~30 s to start on 2 cores)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'topoverify[ray]')")
    try:
        assert main(["report", "--config", str(_tiny(tmp_path)), "--out", str(tmp_path / "r"), "--ray"]) == 0
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert "(Ray tasks)" in capsys.readouterr().out
    sec = _data(tmp_path / "r")["sections"][0]["data"]
    assert sec["executor"] == "ray" and sec["n_computed"] == 2 and sec["onset_distribution"]["seeds"] == [0, 1]
