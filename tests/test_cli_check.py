"""``topoverify check-optimizer``: exit codes, --json, --kwargs, errors."""

import json

import pytest

from topoverify.cli import main

FAST = ["--examples", "3", "--no-conv"]


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
