"""The claims index (``spec/claims.toml``) and its traceability: does every claim have tests that exist, a
sympy encoding that resolves, a checker that resolves (``module:function``, imported and callable), and a
proof file?

``topoverify spec`` (:mod:`topoverify.cli.spec`) prints :func:`traceability`'s table or JSON.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import tomllib
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from topoverify.errors import TopoverifyError
from topoverify.formatting import ResultMixin

__all__ = [
    "Claim",
    "TestTrace",
    "ClaimTrace",
    "TraceabilityReport",
    "default_claims_path",
    "default_repo_root",
    "load_claims",
    "test_exists",
    "checker_resolves",
    "traceability",
]


def default_repo_root() -> Path:
    """The source checkout this module lives in (``topoverify/..``)."""
    return Path(__file__).resolve().parents[1]


def default_claims_path() -> Path:
    return default_repo_root() / "spec" / "claims.toml"


@dataclasses.dataclass(frozen=True)
class Claim(ResultMixin):
    """One claim of the spec."""

    id: str
    title: str
    assumptions: tuple[str, ...]
    statement: str
    sympy: str | None
    proof: str | None
    tests: tuple[str, ...]
    checker: str | None = None

    def __str__(self) -> str:
        lines = [f"{self.id}: {self.title}", "  assumptions:"]
        lines += [f"    - {a}" for a in self.assumptions]
        lines.append(f"  statement: {self.statement}")
        if self.sympy:
            lines.append(f"  sympy: topoverify.symbolic.{self.sympy}")
        if self.proof:
            lines.append(f"  proof: {self.proof}")
        if self.checker:
            lines.append(f"  checker: {self.checker}")
        lines.append("  tests:")
        lines += [f"    - {t}" for t in self.tests]
        return "\n".join(lines)


_REQUIRED = {"title": str, "statement": str, "assumptions": list, "tests": list}
_OPTIONAL = {"sympy": str, "proof": str, "checker": str}


def load_claims(path: str | Path | None = None) -> list[Claim]:
    """Read the claims index; every table is one claim (its key is the id).

    Raises :class:`TopoverifyError` if the file is missing or a claim lacks a required key or has a key of
    the wrong type.
    """
    p = Path(path) if path is not None else default_claims_path()
    if not p.is_file():
        raise TopoverifyError(
            f"claims index not found at {p}; the spec ships with the source tree, so run from a source "
            "checkout or an editable install (pip install -e .), or pass the path of spec/claims.toml"
        )
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise TopoverifyError(f"{p} is not valid TOML: {exc}; fix the syntax") from exc
    claims = []
    for cid, table in data.items():
        if not isinstance(table, dict):
            raise TopoverifyError(f"{p}: top-level key {cid!r} is not a table; write each claim as [ID]")
        for key, typ in _REQUIRED.items():
            if key not in table:
                raise TopoverifyError(f"{p}: claim {cid} has no {key!r}; add it (required keys: {sorted(_REQUIRED)})")
            if not isinstance(table[key], typ):
                raise TopoverifyError(f"{p}: claim {cid}: {key!r} must be a {typ.__name__}")
        for key, typ in _OPTIONAL.items():
            if key in table and not isinstance(table[key], typ):
                raise TopoverifyError(f"{p}: claim {cid}: {key!r} must be a {typ.__name__}")
        for key in ("assumptions", "tests"):
            if not all(isinstance(x, str) for x in table[key]):
                raise TopoverifyError(f"{p}: claim {cid}: every entry of {key!r} must be a string")
        claims.append(
            Claim(
                id=cid,
                title=table["title"],
                assumptions=tuple(table["assumptions"]),
                statement=table["statement"],
                sympy=table.get("sympy") or None,
                proof=table.get("proof") or None,
                tests=tuple(table["tests"]),
                checker=table.get("checker") or None,
            )
        )
    return claims


# ---------------------------------------------------------------------------------------------------------
# Traceability
# ---------------------------------------------------------------------------------------------------------


def _split_node_id(node_id: str) -> tuple[str, list[str]]:
    file_part, _, rest = node_id.partition("::")
    names = [n.split("[", 1)[0] for n in rest.split("::")] if rest else []
    return file_part, names


def _find_in_body(body: list[ast.stmt], names: list[str]) -> bool:
    if not names:
        return False
    head, tail = names[0], names[1:]
    for node in body:
        if tail:
            if isinstance(node, ast.ClassDef) and node.name == head:
                return _find_in_body(node.body, tail)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == head:
            return True
        elif isinstance(node, ast.ClassDef) and not tail:
            # ``file::test_name`` also finds a method of a test class (pytest would spell it Class::name)
            if _find_in_body(node.body, [head]):
                return True
    return False


def test_exists(node_id: str, repo_root: str | Path | None = None) -> tuple[bool, str]:
    """Whether ``file::[Class::]function`` names a function in that file (parsed with ``ast``, not run).

    Returns ``(exists, reason)`` where reason explains a miss.
    """
    root = Path(repo_root) if repo_root is not None else default_repo_root()
    file_part, names = _split_node_id(node_id)
    if not names:
        return False, "not a node id (expected path/to/test_file.py::test_name)"
    path = root / file_part
    if not path.is_file():
        return False, f"file {file_part} does not exist"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        return False, f"{file_part} does not parse: {exc.msg} (line {exc.lineno})"
    if _find_in_body(tree.body, names):
        return True, ""
    return False, f"no function {'::'.join(names)} in {file_part}"


test_exists.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite its name


@dataclasses.dataclass(frozen=True)
class TestTrace(ResultMixin):
    __test__ = False  # not a pytest test class

    node_id: str
    exists: bool
    reason: str


@dataclasses.dataclass(frozen=True)
class ClaimTrace(ResultMixin):
    """Traceability of one claim; ``traced`` is True when nothing is missing."""

    id: str
    title: str
    tests: tuple[TestTrace, ...]
    sympy: str | None
    sympy_resolves: bool | None
    proof: str | None
    proof_exists: bool | None
    problems: tuple[str, ...]
    checker: str | None = None
    checker_resolves: bool | None = None

    @property
    def traced(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["traced"] = self.traced
        return d


@dataclasses.dataclass(frozen=True)
class TraceabilityReport(ResultMixin):
    """Traceability of every claim of an index."""

    claims_path: str
    repo_root: str
    claims: tuple[ClaimTrace, ...]

    @property
    def all_traced(self) -> bool:
        return bool(self.claims) and all(c.traced for c in self.claims)

    @property
    def problems(self) -> list[str]:
        return [f"{c.id}: {p}" for c in self.claims for p in c.problems]

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["all_traced"] = self.all_traced
        return d

    def __str__(self) -> str:
        table = Table(title=f"Claims traceability ({self.claims_path})", show_lines=False)
        for col in ("claim", "title", "tests", "sympy", "checker", "proof", "status"):
            table.add_column(col)
        for c in self.claims:
            n_ok = sum(t.exists for t in c.tests)
            tests = f"{n_ok}/{len(c.tests)} exist" if c.tests else "none"
            sympy = "-" if c.sympy is None else (f"{c.sympy} ok" if c.sympy_resolves else f"{c.sympy} MISSING")
            checker = "-" if c.checker is None else (c.checker if c.checker_resolves else f"{c.checker} MISSING")
            proof = "-" if c.proof is None else ("ok" if c.proof_exists else "MISSING")
            table.add_row(c.id, c.title, tests, sympy, checker, proof, "traced" if c.traced else "NOT TRACED")
        console = Console(record=True, width=200, file=_NullIO(), color_system=None)
        console.print(table)
        out = console.export_text()
        problems = self.problems
        if problems:
            out += "\nProblems:\n" + "\n".join(f"  - {p}" for p in problems) + "\n"
        else:
            out += f"\nAll {len(self.claims)} claims traced.\n"
        return out


class _NullIO:
    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass


def _sympy_resolves(name: str) -> tuple[bool, str]:
    try:
        mod = importlib.import_module("topoverify.symbolic")
    except Exception as exc:  # pragma: no cover - the package is part of this repo
        return False, f"topoverify.symbolic does not import: {exc}"
    obj: Any = mod
    for part in name.split("."):
        if not hasattr(obj, part):
            return False, f"sympy name {name!r} is not an attribute of topoverify.symbolic"
        obj = getattr(obj, part)
    return True, ""


def checker_resolves(spec: str) -> tuple[bool, str]:
    """Whether ``"package.module:function"`` imports and names a callable; ``(ok, reason)``."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        return False, f"checker {spec!r} is not of the form package.module:function"
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as exc:  # noqa: BLE001 - any import failure means the checker does not resolve
        return False, f"checker module {mod_name} does not import: {type(exc).__name__}: {exc}"
    for part in attr.split("."):
        if not hasattr(obj, part):
            return False, f"checker {spec}: {mod_name} has no attribute {attr!r}"
        obj = getattr(obj, part)
    if not callable(obj):
        return False, f"checker {spec} is not callable"
    return True, ""


def traceability(claims: list[Claim], repo_root: str | Path | None = None, *, claims_path: str | Path = "") -> (
    TraceabilityReport
):
    """Check every claim: at least one test, every listed test exists, the sympy name and the checker resolve,
    the proof exists. A claim without a checker is not traced (every claim names the one function that
    checks it against real runs)."""
    root = Path(repo_root) if repo_root is not None else default_repo_root()
    traces = []
    for c in claims:
        problems: list[str] = []
        tests = []
        if not c.tests:
            problems.append("lists no tests")
        for node in c.tests:
            ok, reason = test_exists(node, root)
            tests.append(TestTrace(node_id=node, exists=ok, reason=reason))
            if not ok:
                problems.append(f"test {node}: {reason}")
        sympy_ok: bool | None = None
        if c.sympy is not None:
            sympy_ok, reason = _sympy_resolves(c.sympy)
            if not sympy_ok:
                problems.append(reason)
        checker_ok: bool | None = None
        if c.checker is None:
            problems.append("names no checker (add checker = \"package.module:function\")")
        else:
            checker_ok, reason = checker_resolves(c.checker)
            if not checker_ok:
                problems.append(reason)
        proof_ok: bool | None = None
        if c.proof is not None:
            proof_ok = (root / c.proof).is_file()
            if not proof_ok:
                problems.append(f"proof file {c.proof} does not exist")
        traces.append(
            ClaimTrace(
                id=c.id,
                title=c.title,
                tests=tuple(tests),
                sympy=c.sympy,
                sympy_resolves=sympy_ok,
                proof=c.proof,
                proof_exists=proof_ok,
                problems=tuple(problems),
                checker=c.checker,
                checker_resolves=checker_ok,
            )
        )
    return TraceabilityReport(claims_path=str(claims_path), repo_root=str(root), claims=tuple(traces))
