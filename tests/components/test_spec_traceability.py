"""The spec index (spec/claims.toml) is complete and traceable: every claim has tests that exist, a sympy
encoding that resolves where one is named, a checker (module:function) that imports and is callable, and its
proof file; the traceability check itself can fail."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import topoverify.symbolic
from topoverify.errors import TopoverifyError
from topoverify.cli.spec import run_spec_command
from topoverify.spec_index import (
    checker_resolves,
    default_claims_path,
    default_repo_root,
    load_claims,
    test_exists,
    traceability,
)

ROOT = default_repo_root()
CLAIM_IDS = ["T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8", "T9"]
SYMBOLIC_TEST_FILES = {"tests/claims/test_symbolic.py", "tests/claims/test_proofs_algebra.py", "tests/claims/test_t9_symbolic.py"}
OWN_TEST_FILES = SYMBOLIC_TEST_FILES | {"tests/components/test_spec_traceability.py"}


@pytest.fixture(scope="module")
def claims():
    return load_claims()


def test_claims_file_loads_with_the_expected_ids(claims):
    assert default_claims_path().is_file()
    assert [c.id for c in claims] == CLAIM_IDS
    for c in claims:
        assert c.title.strip() and c.statement.strip(), c.id
        assert c.assumptions and all(a.strip() for a in c.assumptions), c.id


def test_every_claim_lists_a_test(claims):
    for c in claims:
        assert c.tests, f"{c.id} lists no tests"
        assert all("::" in t for t in c.tests), c.id


def test_every_sympy_name_resolves(claims):
    for c in claims:
        if c.sympy is not None:
            assert hasattr(topoverify.symbolic, c.sympy), f"{c.id}: topoverify.symbolic.{c.sympy} missing"


def test_every_claim_names_a_checker(claims):
    for c in claims:
        assert c.checker, f"{c.id} names no checker"
        module, sep, function = c.checker.partition(":")
        assert sep and module.startswith("topoverify.") and function.isidentifier(), c.checker


def test_every_checker_resolves(claims):
    """Imports each checker's module and requires a callable. Fails while a planned checker module is still
    being written (issue 9); the message names which."""
    missing = [f"{c.id}: {reason}" for c in claims for ok, reason in [checker_resolves(c.checker)] if not ok]
    assert not missing, "checkers that do not resolve:\n" + "\n".join(missing)


def test_checker_resolution_can_fail():
    assert checker_resolves("topoverify.symbolic:bound_summary") == (True, "")
    for spec, word in [("topoverify.symbolic", "form"), ("topoverify.symbolic:no_such", "no attribute"),
                       ("topoverify.no_such_module:f", "does not import"), ("topoverify.symbolic:ETA", "callable")]:
        ok, reason = checker_resolves(spec)
        assert not ok and word in reason, (spec, reason)


def test_every_claim_with_a_sympy_form_has_a_symbolic_test_that_exists(claims):
    for c in claims:
        if c.sympy is None:
            continue
        own = [t for t in c.tests if t.split("::")[0] in SYMBOLIC_TEST_FILES]
        assert own, f"{c.id} has sympy = {c.sympy!r} but no test in test_symbolic/test_proofs_algebra"
        for t in own:
            ok, reason = test_exists(t, ROOT)
            assert ok, f"{c.id}: {reason}"


def test_every_listed_proof_exists(claims):
    for c in claims:
        if c.proof is not None:
            assert (ROOT / c.proof).is_file(), f"{c.id}: proof {c.proof} missing"


def test_own_listed_tests_exist(claims):
    """The tests in this package's own files (symbolic, proofs algebra) exist now."""
    for c in claims:
        for t in c.tests:
            if t.split("::")[0] in OWN_TEST_FILES:
                ok, reason = test_exists(t, ROOT)
                assert ok, f"{c.id}: {reason}"


def test_every_listed_test_exists(claims):
    """All listed tests, including those in other files (field, step bounds, topology, merges)."""
    report = traceability(claims, ROOT)
    missing = [f"{c.id}: {t.node_id} ({t.reason})" for c in report.claims for t in c.tests if not t.exists]
    assert not missing, "listed tests that do not exist:\n" + "\n".join(missing)


def test_full_traceability_report(claims):
    report = traceability(claims, ROOT)
    assert report.all_traced, str(report)


def test_readme_states_exactly_the_indexed_claims(claims):
    text = (ROOT / "spec" / "README.md").read_text(encoding="utf-8")
    mentioned = set(re.findall(r"\bT\d+\b", text))
    assert mentioned == set(CLAIM_IDS)
    for c in claims:
        assert re.search(rf"^#+ .*\b{c.id}\b", text, flags=re.M), f"spec/README.md has no heading for {c.id}"


def test_proofs_mention_only_indexed_claims():
    ids = set()
    for p in (ROOT / "proofs_notes").glob("*.md"):
        ids |= set(re.findall(r"\bT\d+\b", p.read_text(encoding="utf-8")))
    assert ids <= set(CLAIM_IDS), ids - set(CLAIM_IDS)


# --------------------------------------------------------------------------------------------- the checker can fail


BAD_TOML = """
[A1]
title = "no tests, no checker"
assumptions = ["x"]
statement = "s"
tests = []

[A2]
title = "bad sympy name"
assumptions = ["x"]
statement = "s"
sympy = "no_such_symbolic_object"
checker = "topoverify.symbolic:no_such_checker"
tests = ["tests/test_ok.py::test_ok"]

[A3]
title = "nonexistent test id and missing proof"
assumptions = ["x"]
statement = "s"
proof = "proofs_notes/nowhere.md"
checker = "topoverify.symbolic:bound_summary"
tests = ["tests/test_ok.py::test_missing", "tests/test_absent.py::test_x", "tests/test_ok.py::TestC::test_nope"]

[A4]
title = "fine, including a method in a class and a parametrised id"
assumptions = ["x"]
statement = "s"
sympy = "one_step_bounds"
checker = "topoverify.symbolic:bound_summary"
proof = "proofs_notes/here.md"
tests = ["tests/test_ok.py::test_ok", "tests/test_ok.py::TestC::test_m", "tests/test_ok.py::test_ok[3-4]"]
"""

TEST_OK = """
def test_ok():
    pass

class TestC:
    def test_m(self):
        pass
"""


@pytest.fixture()
def synthetic(tmp_path: Path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_ok.py").write_text(TEST_OK)
    (tmp_path / "proofs_notes").mkdir()
    (tmp_path / "proofs_notes" / "here.md").write_text("# proof\n")
    (tmp_path / "spec").mkdir()
    path = tmp_path / "spec" / "claims.toml"
    path.write_text(BAD_TOML)
    return tmp_path, path


def test_synthetic_bad_claims_are_reported_not_traced(synthetic):
    root, path = synthetic
    report = traceability(load_claims(path), root, claims_path=path)
    by_id = {c.id: c for c in report.claims}
    assert not report.all_traced
    assert not by_id["A1"].traced and any("no tests" in p for p in by_id["A1"].problems)
    assert any("names no checker" in p for p in by_id["A1"].problems) and by_id["A1"].checker_resolves is None
    assert not by_id["A2"].traced and by_id["A2"].sympy_resolves is False and by_id["A2"].checker_resolves is False
    a3 = by_id["A3"]
    assert not a3.traced and a3.proof_exists is False
    assert [t.exists for t in a3.tests] == [False, False, False]
    assert "does not exist" in a3.tests[1].reason
    assert by_id["A4"].traced, by_id["A4"].problems
    assert by_id["A3"].checker_resolves is True and by_id["A4"].checker == "topoverify.symbolic:bound_summary"
    text = str(report)
    assert "NOT TRACED" in text and "A3" in text and "Problems" in text
    assert "checker" in text and "no_such_checker MISSING" in text
    d = report.to_dict()
    json.dumps(d)
    assert d["all_traced"] is False and d["claims"][3]["traced"] is True
    assert d["claims"][3]["checker"] == "topoverify.symbolic:bound_summary" and d["claims"][3]["checker_resolves"]


def test_run_spec_command_exit_codes(synthetic, tmp_path, capsys):
    root, path = synthetic
    assert run_spec_command(path=path, repo_root=root) == 1
    assert "NOT TRACED" in capsys.readouterr().out
    assert run_spec_command(json_output=True, path=path, repo_root=root) == 1
    assert json.loads(capsys.readouterr().out)["all_traced"] is False
    good = tmp_path / "good.toml"
    good.write_text(BAD_TOML.split("[A4]")[0].split("[A1]")[0] + "[A4]" + BAD_TOML.split("[A4]")[1])
    assert run_spec_command(path=good, repo_root=root) == 0
    assert "All 1 claims traced" in capsys.readouterr().out
    assert run_spec_command(path=tmp_path / "absent.toml") == 2
    assert "source checkout" in capsys.readouterr().err


def test_load_claims_errors(tmp_path):
    with pytest.raises(TopoverifyError, match="source checkout"):
        load_claims(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('[X]\ntitle = "t"\nassumptions = []\ntests = []\n')
    with pytest.raises(TopoverifyError, match="statement"):
        load_claims(bad)
    bad.write_text('[X]\ntitle = "t"\nstatement = "s"\nassumptions = "not a list"\ntests = []\n')
    with pytest.raises(TopoverifyError, match="assumptions"):
        load_claims(bad)
    bad.write_text('[X]\ntitle = "t"\nstatement = "s"\nassumptions = []\ntests = []\nchecker = 3\n')
    with pytest.raises(TopoverifyError, match="checker"):
        load_claims(bad)
    bad.write_text("[X\n")
    with pytest.raises(TopoverifyError, match="TOML"):
        load_claims(bad)


def test_test_exists_parses_without_running(tmp_path):
    (tmp_path / "t.py").write_text("import nonexistent_module\n\nasync def test_a():\n    pass\n")
    assert test_exists("t.py::test_a", tmp_path) == (True, "")
    assert test_exists("t.py", tmp_path)[0] is False
    (tmp_path / "broken.py").write_text("def test_a(:\n")
    ok, reason = test_exists("broken.py::test_a", tmp_path)
    assert not ok and "parse" in reason


# --------------------------------------------------------------------------------------------- claims no stronger than proofs


def test_T3_statement_is_no_stronger_than_its_proof(claims):
    """Issue 8, item 3. The linear-field parenthetical must match the counterexample checked in
    test_T3_linear_field_injective_iff_reciprocal_is_not_an_eigenvalue (injective iff 1/(eta K) is no
    eigenvalue; eta K != 1 is not enough), and the continuum statement must rest on a convex set holding the
    support, with the R^d homeomorphism only a remark for the identity activation (a global K fails for
    every T1 field with curvature: test_T3_global_lipschitz_fails_for_T1_fields_with_curvature). The
    one-sided form must ask for an upper bound of mu and strict eta*mu < 1."""
    t3 = next(c for c in claims if c.id == "T3")
    text = " ".join([t3.statement, *t3.assumptions])
    assert "every eta K != 1" not in text and "for every ηK ≠ 1" not in text
    assert "1/(eta K) is not an eigenvalue of A" in t3.statement and "diag(1, 1/2)" in t3.statement
    c1 = next(a for a in t3.assumptions if a.startswith("C1"))
    assert "convex set C" in c1 and "fails for every T1 field" in c1 and "identity activation" in c1
    assert "bi-Lipschitz embedding" in t3.statement and "identity activation only" in t3.statement
    c2 = next(a for a in t3.assumptions if a.startswith("C2"))
    assert "upper bound" in c2 and "not a sampled estimate" in c2
    assert "eta mu < 1" in t3.statement and "eta mu = 1 is not enough" in t3.statement
    readme = (ROOT / "spec" / "README.md").read_text(encoding="utf-8")
    t3_text = readme[readme.index("## T3"):readme.index("## T4")]
    assert "every ηK ≠ 1" not in t3_text and "not an eigenvalue of A" in t3_text
    assert "Remark (identity activation only)" in t3_text and "ημ = 1 is not enough" in t3_text
    assert "are estimates and claim nothing" in t3_text
    proof = (ROOT / "proofs_notes" / "T2_T3_bi_lipschitz.md").read_text(encoding="utf-8")
    assert "Why not all of ℝ^d" in proof and "ημ = 1 is **not** enough" in proof
    assert "upper bound" in proof and "μ_upper" in proof
