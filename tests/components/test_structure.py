"""Static checks of the package's structure (issue 9): cheap, read-only, and each can fail.

* every module under topoverify/ has at most 400 lines, or its docstring has a line starting "Size:" saying why;
* nothing in topoverify/, spec/, proofs_notes/ or README.md cites "THEORY" (a note that is not in the
  repository: the project stands on its own spec/ and proofs_notes/);
* no module outside topoverify/strategies/ imports topoverify.strategies (strategies are for tests);
* every claim of spec/claims.toml names a checker.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "topoverify"
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def test_modules_are_short_or_say_why():
    long = []
    for p in _modules():
        text = p.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if not any(line.strip().startswith("Size:") for line in doc.splitlines()):
            long.append(f"{_rel(p)} ({n} lines)")
    assert not long, (f"modules over {MAX_LINES} lines without a 'Size:' line in their docstring:\n"
                      + "\n".join(long))


def test_no_citation_of_a_note_outside_the_repository():
    files = [*_modules(), *(ROOT / "spec").rglob("*"), *(ROOT / "proofs_notes").rglob("*"), ROOT / "README.md"]
    citing = [_rel(p) for p in files if p.is_file() and p.suffix in {".py", ".md", ".toml", ""}
              and "THEORY" in p.read_text(encoding="utf-8")]
    assert not citing, ("files citing THEORY (cite the claim ID and spec/ or proofs_notes/ instead):\n"
                        + "\n".join(citing))


def _imported_modules(tree: ast.AST, module: str) -> set[str]:
    """Absolute names imported by a module (relative imports resolved against ``module``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: -node.level]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    return names


def test_strategies_are_imported_only_by_strategies_and_tests():
    offenders = []
    for p in _modules():
        module = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        if module.startswith("topoverify.strategies"):
            continue
        imported = _imported_modules(ast.parse(p.read_text(encoding="utf-8")), module)
        hits = sorted(n for n in imported if n == "topoverify.strategies" or n.startswith("topoverify.strategies."))
        if hits:
            offenders.append(f"{_rel(p)} imports {', '.join(hits)}")
    assert not offenders, "runtime modules importing Hypothesis strategies:\n" + "\n".join(offenders)


def test_every_claim_names_a_checker():
    claims = tomllib.loads((ROOT / "spec" / "claims.toml").read_text(encoding="utf-8"))
    missing = [cid for cid, table in claims.items() if not table.get("checker")]
    assert claims and not missing, f"claims without a checker key: {missing}"


def test_the_checks_can_fail(tmp_path):
    """The import scan sees a strategies import in any of its forms, and a long module without 'Size:'."""
    tree = ast.parse("from ..strategies import models\nimport topoverify.strategies.clouds as c\n")
    names = _imported_modules(tree, "topoverify.checks.thing")
    assert "topoverify.strategies.models" in names and "topoverify.strategies.clouds" in names
    text = '"""Doc.\n\nSize: a reason.\n"""\n'
    assert any(line.startswith("Size:") for line in (ast.get_docstring(ast.parse(text)) or "").splitlines())


def test_public_names_resolve_lazily():
    """Every public name resolves (topoverify.lazy), and importing the package imports neither torch nor the
    kit's modules: a sweep's worker process imports only what a run needs."""
    import subprocess
    import sys

    import topoverify
    import topoverify.experiments as experiments
    for pkg in (topoverify, experiments):
        unresolved = [n for n in pkg.__all__ if n != "__version__" and getattr(pkg, n, None) is None]
        assert not unresolved, f"{pkg.__name__}: {unresolved}"
        assert set(pkg.__all__) <= set(dir(pkg))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        topoverify.not_a_name  # noqa: B018
    code = ("import topoverify; topoverify.reports.api.report; topoverify.neurons.layouts.neuron_cloud; "
            "topoverify.experiments.schedules.step_decay; topoverify.checks.critical_rate.check_critical_rate")
    subprocess.run([sys.executable, "-c", code], check=True)  # submodules on attribute access, as before
    code = ("import sys, topoverify, topoverify.experiments; "
            "print(sorted(m for m in ('torch', 'topoverify.checks.step_prediction', 'topoverify.reports.api') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
