"""``topoverify report --config`` on GPT-2: the shipped example configs load and plan (GPT-2 small's without
building it), a report config's seed reaches the gpt2 factory, and the CLI writes a valid report that names the
GPT-2 layers (default form: a one-block GPT-2 of d_model 8; the shipped tiny example itself is marked slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="the GPT-2 report needs pip install topoverify[transformers]")

from topoverify.reports.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY, SMALL = ROOT / "examples" / "gpt2_tiny_report.toml", ROOT / "examples" / "gpt2_small_report.toml"

MINI = """title = "One-block GPT-2"
[model]
factory = "topoverify.models.gpt2:gpt2"
kwargs = { config = { n_layer = 1, n_embd = 8, n_head = 2, n_inner = 16, vocab_size = 16, n_positions = 8 } }
[data]
factory = "topoverify.models.gpt2:synthetic_tokens"
kwargs = { batch_size = 2, seq_len = 6, vocab_size = 16 }
[loss]
fn = "topoverify.models.gpt2:lm_loss"
[optimizer]
factory = "torch.optim:AdamW"
[run]
rates = [0.001]
steps = 2
every = 2
layers = ["transformer.h.0.mlp.c_fc"]
sharpness = false
"""


def test_example_configs_load_and_plan():
    from topoverify.models.gpt2 import gpt2, gpt2_config, lm_loss
    tiny = load_config(TINY)
    assert tiny.model_factory is gpt2 and tiny.loss_fn is lm_loss and tiny.optimizer_name.startswith("AdamW")
    assert [s.layer for s in tiny.plan()] == ["transformer.h.0.mlp.c_fc"]
    small = load_config(SMALL)
    assert small.model_kwargs == {"config": "small"} and small.data_kwargs["seq_len"] == 128
    assert gpt2_config(small.model_kwargs["config"]).n_inner == 3072


def test_the_run_seed_reaches_the_gpt2_factory():
    job = load_config({**_mini_dict(), "run": {"rates": [0.001], "seeds": [0, 3]}})
    from topoverify.models.gpt2 import gpt2
    m3 = job.scenario(3).model()
    expected = gpt2(job.model_kwargs["config"], seed=3)
    assert all(torch.equal(p, q) for p, q in zip(m3.parameters(), expected.parameters()))
    assert not torch.equal(next(job.scenario(0).model().parameters()), next(m3.parameters()))


def _mini_dict() -> dict:
    import tomllib
    return tomllib.loads(MINI)


def _cli(config: Path, out: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "topoverify.cli", "report", "--config", str(config), "--out",
                           str(out), "--no-progress"], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def _check_report(out: Path, proc: subprocess.CompletedProcess, names: list[str]) -> dict:
    from topoverify.reports.schema import validate_report
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    d = json.loads((out / "report.json").read_text())
    validate_report(d)
    assert not d["errors"]
    md = (out / "report.md").read_text()
    for name in names:                       # the per-layer table names every detected GPT-2 layer
        assert name in md, name
    return d


def test_cli_report_on_a_one_block_gpt2(tmp_path):
    cfg = tmp_path / "gpt2.toml"
    cfg.write_text(MINI)
    out = tmp_path / "report"
    proc = _cli(cfg, out, timeout=300)
    _check_report(out, proc, ["transformer.h.0.mlp.c_fc", "transformer.h.0.attn.heads"])


@pytest.mark.slow
def test_cli_report_on_the_shipped_tiny_example(tmp_path):
    out = tmp_path / "report"
    proc = _cli(TINY, out, timeout=1200)
    _check_report(out, proc, [f"transformer.h.{i}.{k}" for i in (0, 1) for k in ("mlp.c_fc", "attn.heads")])
