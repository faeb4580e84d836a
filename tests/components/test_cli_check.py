"""The command line: ``topoverify check-optimizer`` (exit codes, --json, --kwargs, errors) and the one-module-
per-subcommand dispatch (``verify-step`` takes every real step once)."""

import json

import pytest
import torch

from topoverify.cli import bounds, check_optimizer, report, spec, verify_step
from topoverify.cli.main import build_parser, main

FAST = ["--examples", "3", "--no-conv"]


def test_every_subcommand_is_dispatched_to_its_own_module():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == ["bounds", "check-optimizer", "report", "spec", "verify-step"]
    for name, module in [("bounds", bounds), ("check-optimizer", check_optimizer), ("report", report),
                         ("spec", spec), ("verify-step", verify_step)]:
        assert sub.choices[name].get_default("func") is module.run


def test_verify_step_takes_each_real_step_once(monkeypatch, capsys):
    """verify_step steps private copies; the command continues from them instead of stepping again."""
    calls = []
    real_step = torch.optim.SGD.step

    def counting_step(self, *args, **kwargs):
        calls.append(1)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", counting_step)
    assert main(["verify-step", "--lr", "0.04", "--steps", "3", "--neurons", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps_checked"] == 3 and len(calls) == 3


def test_equivariant_exit_0_and_json(capsys):
    rc = main(["check-optimizer", "torch.optim:SGD", "--kwargs", '{"lr": 0.01, "momentum": 0.9}', "--json",
               *FAST])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["verdict"] == "equivariant" and out["optimizer_kwargs"]["momentum"] == 0.9


def test_not_equivariant_exit_1(capsys):
    rc = main(["check-optimizer", "broken_optimizers:PerIndexLR", *FAST])
    assert rc == 1
    assert "NOT EQUIVARIANT" in capsys.readouterr().out


def test_stochastic_and_inconclusive_exit_3(capsys):
    assert main(["check-optimizer", "broken_optimizers:NoisySGD", *FAST]) == 3
    assert main(["check-optimizer", "torch.optim:SGD", "--kwargs", '{"lr": 0}', "--json", *FAST]) == 3
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["verdict"] == "inconclusive"


def test_error_and_usage_exit_2(capsys):
    assert main(["check-optimizer", "torch.optim:SparseAdam", *FAST]) == 2
    assert main(["check-optimizer", "no_such_module:X"]) == 2
    assert main(["check-optimizer", "torch.optim:Adam", "--kwargs", "not json"]) == 2
    assert main(["check-optimizer", "torch.optim:Adam", "--kwargs", "[1]"]) == 2
    assert main(["check-optimizer", "torch.optim:NoSuch"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["check-optimizer"])
    assert exc.value.code == 2


def test_dotted_spec_and_options(capsys):
    rc = main(["check-optimizer", "torch.optim.Adam", "--steps", "7", "--seed", "5", "--dtype", "float32",
               "--json", *FAST])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["steps"] == 7 and out["seed"] == 5 and out["dtype"] == "float32"


def test_module_in_the_current_directory(tmp_path, monkeypatch, capsys):
    # the console script's sys.path[0] is its bin directory: the current one must be added, as pytest does
    (tmp_path / "my_local_opt.py").write_text("import torch\n\ndef make(params, lr=0.01):\n"
                                              "    return torch.optim.SGD(params, lr=lr)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(__import__("sys").modules, "my_local_opt", raising=False)
    rc = main(["check-optimizer", "my_local_opt:make", "--json", *FAST])
    assert rc == 0 and json.loads(capsys.readouterr().out)["verdict"] == "equivariant"


@pytest.mark.parametrize("argv", [["no_such_module:X"], ["torch.optim:Adam", "--kwargs", "not json"],
                                  ["torch.optim:Adam", "--kwargs", "[1]"], ["torch.optim:NoSuch"]])
def test_usage_errors_with_json_print_one_json_object(argv, capsys):
    assert main(["check-optimizer", *argv, "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "error" and out["message"]


def test_equivariant_message_states_the_limits_of_the_search(capsys):
    main(["check-optimizer", "torch.optim:SGD", "--kwargs", '{"lr": 0.01}', "--steps", "7", "--json", *FAST])
    msg = json.loads(capsys.readouterr().out)["message"]
    assert "7 steps" in msg and "float64" in msg and "width 2-16" in msg and "no conv nets" in msg


def test_ctrl_c_prints_the_partial_verdict_not_a_traceback(monkeypatch, capsys):
    from broken_optimizers import InterruptAfter
    monkeypatch.setattr(InterruptAfter, "CALLS", 150)  # after the setup probes and an example or two
    monkeypatch.setattr(InterruptAfter, "calls", 0)
    assert main(["check-optimizer", "broken_optimizers:InterruptAfter", *FAST]) == 130
    out, err = capsys.readouterr()
    assert "INCONCLUSIVE" in out and "interrupted" in out and "Traceback" not in out + err
    monkeypatch.setattr(InterruptAfter, "calls", 0)
    assert main(["check-optimizer", "broken_optimizers:InterruptAfter", "--json", *FAST]) == 130
    data = json.loads(capsys.readouterr().out)
    assert data["interrupted"] is True and data["verdict"] == "inconclusive" and data["examples_run"] >= 1


def test_timeout_names_the_hang(capsys):
    # one (the simplest) generated example, then the large-tensor top-up, where SlowOnLarge stalls
    assert main(["check-optimizer", "broken_optimizers:SlowOnLarge", "--timeout", "2", "--json", "--examples", "1",
                 "--no-conv", "--dtype", "float64"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "error" and "SlowOnLarge.update" in data["message"] and data["timeout_s"] == 2
    assert main(["check-optimizer", "torch.optim:SGD", "--timeout", "-1"]) == 2


def test_dtype_and_large_options_set_the_coverage(capsys):
    main(["check-optimizer", "torch.optim:SGD", "--json", *FAST])
    cov = json.loads(capsys.readouterr().out)["coverage"]
    assert cov["by_dtype"]["float64"] >= 1 and cov["by_dtype"]["float32"] >= 1 and cov["large"] >= 1
    main(["check-optimizer", "torch.optim:SGD", "--dtype", "float64", "--no-large", "--json", *FAST])
    out = json.loads(capsys.readouterr().out)
    assert out["dtypes"] == ["float64"] and out["coverage"]["large"] == 0
    assert "no tensors above 256 entries" in out["message"]


@pytest.mark.slow
def test_sigint_prints_the_partial_verdict_and_exits_130():
    """A real Ctrl-C (SIGINT) to the command while the rule hangs in an example (a subprocess: ~10 s, mostly
    importing torch; the small form, test_ctrl_c_prints_the_partial_verdict_not_a_traceback, always runs)."""
    import os
    import signal
    import subprocess
    import sys
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/, home of broken_optimizers.py
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "topoverify.cli", "check-optimizer",
                             "broken_optimizers:SlowOnLarge", "--kwargs", '{"announce": true}', "--timeout", "0",
                             "--examples", "1", "--dtype", "float64", "--no-conv"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr.readline().strip() == "stalling"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "SlowOnLarge" in out and "interrupted" in out and "Traceback" not in out + err
