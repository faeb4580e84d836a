"""``topoverify report``: the quick default job in a subprocess (exit 0, every file written, the JSON valid
against the schema, the summary table and the path printed), and the exit codes of the other outcomes: a bad
config (2, nothing run), a model without a detectable layer (3, the report still written with the error), a
diverging rate (0: divergence is a finding)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from topoverify.cli.main import main
from topoverify.reports.schema import validate_report

ROOT = pathlib.Path(__file__).resolve().parents[2]

USER_MODULE = '''
import torch
from torch import nn

def no_layer_model():
    return nn.Sequential(nn.Linear(1, 1)).double()

def make_data(n=16):
    x = torch.linspace(-1, 1, n, dtype=torch.float64)[:, None]
    return x, torch.sin(x)
'''


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick") / "tmp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "topoverify.cli", "report", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    return proc, out


def test_quick_report_writes_every_file(quick):
    proc, out = quick
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("report.html", "report.md", "report.json"):
        assert (out / name).stat().st_size > 0
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(pngs) >= 4 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    d = json.loads((out / "report.json").read_text())
    validate_report(d)
    assert d["errors"] == []
    kinds = [s["kind"] for s in d["sections"]]
    assert kinds.count("sweep") >= 2 and "schedule" in kinds
    # the summary table and the report's path on stdout
    assert "phase reached" in proc.stdout and str(out / "report.html") in proc.stdout


def test_quick_report_shows_both_phases_and_divergence(quick):
    """The default must show a run that keeps its topology with lr*K < 1 at every step, and a run that
    simplifies (certain Betti change) without diverging."""
    _, out = quick
    d = json.loads((out / "report.json").read_text())
    runs = [r for s in d["sections"] for r in s["data"]["runs"]]
    assert any(r["verdict"] == "kept" and r["max_lrK"] < 1 for r in runs)
    assert any(r["verdict"] == "changed" and not r["diverged"] for r in runs)
    assert any(r["diverged"] for r in runs)
    assert any(f.startswith("circle/SGD: predicted eta*") for f in d["findings"])
    assert any("skipped" in f for f in d["findings"])  # digits is skipped in the quick form, with a note
    assert "section_seconds" in d["config"]


def _write(tmp_path, toml: str) -> pathlib.Path:
    (tmp_path / "h5_cli_user.py").write_text(USER_MODULE)
    p = tmp_path / "run.toml"
    p.write_text(toml)
    return p


def test_config_error_exits_2_and_runs_nothing(tmp_path, capsys):
    cfg = _write(tmp_path, '[model]\nfactory = "h5_missing_pkg.models:make_model"\n'
                           '[data]\nfactory = "h5_cli_user:make_data"\n[run]\nrates = [0.1]\n')
    out = tmp_path / "out"
    assert main(["report", "--config", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "h5_missing_pkg" in err and "[model].factory" in err and "PYTHONPATH" in err
    assert not out.exists()
    cfg.write_text('[model]\nfactory = "h5_cli_user:make_modle"\n[data]\nfactory = "h5_cli_user:make_data"\n'
                   '[run]\nrates = [0.1]\n')
    assert main(["report", "--config", str(cfg), "--out", str(out)]) == 2
    assert "make_modle" in capsys.readouterr().err and not out.exists()
    assert main(["report", "--config", str(tmp_path / "nope.toml"), "--out", str(out)]) == 2


def test_model_without_layers_still_writes_the_report_and_exits_3(tmp_path, capsys):
    cfg = _write(tmp_path, '[model]\nfactory = "h5_cli_user:no_layer_model"\n'
                           '[data]\nfactory = "h5_cli_user:make_data"\n[run]\nrates = [0.1]\nsteps = 2\n')
    out = tmp_path / "out"
    assert main(["report", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 3
    d = json.loads((out / "report.json").read_text())
    validate_report(d)
    assert d["errors"] and (out / "report.html").exists()
    assert "section(s) failed" in capsys.readouterr().err


def test_diverging_rate_is_a_finding_exit_0(tmp_path, capsys):
    cfg = _write(tmp_path, 'title = "circle, one rate too large"\n[data]\nscenario = "circle"\n'
                           'kwargs = {n = 12}\n[run]\nrates = [0.01, 1000.0]\nsteps = 12\nevery = 4\n'
                           'sharpness = false\n')
    out = tmp_path / "out"
    assert main(["report", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    d = json.loads((out / "report.json").read_text())
    validate_report(d)
    runs = d["sections"][0]["data"]["runs"]
    assert [r["diverged"] for r in runs] == [False, True] and d["errors"] == []
    assert any("divergence from lr = 1000" in f for f in d["findings"])
    assert "diverged at step" in capsys.readouterr().out


@pytest.mark.slow
def test_example_config_runs_from_the_repository_root(tmp_path, monkeypatch, capsys):
    """examples/report_config.toml as documented (about 30 s); its small form, loading and validating the file,
    always runs in test_report_config.py."""
    monkeypatch.chdir(ROOT)
    out = tmp_path / "example"
    assert main(["report", "--config", "examples/report_config.toml", "--out", str(out), "--no-progress"]) == 0
    d = json.loads((out / "report.json").read_text())
    validate_report(d)
    runs = [r for s in d["sections"] for r in s["data"]["runs"]]
    assert len(runs) == 6 and any(r["diverged"] for r in runs) and d["errors"] == []
