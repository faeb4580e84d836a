"""Symbolic forms of the step bounds (claims T2–T5) and their numeric (numpy / torch) versions.

Everything numeric in this module is obtained by ``sympy.lambdify`` from the symbolic expressions defined
here, so the checker evaluates exactly the formulas that the spec states and the tests verify:

* T2  one-step bounds      ``(1 - eta*K, 1 + eta*K)``                       :func:`one_step_bounds`
* T3  critical rate        ``eta* = 1/K``, *solved* from ``1 - eta*K > 0``   :func:`solve_eta_star`, ``ETA_STAR``
* T4  multi-step bounds    ``prod(1 - eta_t K_t)``, ``prod(1 + eta_t K_t)``   :func:`multistep_bounds`
* T5  log-scale interleaving ``eps(a, b) = max(log b, -log a)``; with the T2 factors ``eps = -log(1 - eta*K)``
                                                                             :func:`interleaving_epsilon`, ``EPSILON``

Numeric helpers (:func:`bounds_numeric`, :func:`eta_star_numeric`, :func:`epsilon_numeric`,
:func:`multistep_bounds_numeric`) accept Python floats, numpy arrays and torch tensors and return the same
kind (a float for scalar input); :func:`topoverify.symbolic.summary.bound_summary` packs everything for one
``(K, lr, steps)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator

import numpy as np
import sympy as sp
import torch

from topoverify.formatting import ResultMixin, fmt
from topoverify.errors import TopoverifyError

__all__ = [
    "ETA",
    "K",
    "T",
    "X",
    "STEP",
    "ETA_T",
    "K_T",
    "ONE_STEP_BOUNDS",
    "ETA_STAR",
    "EPSILON",
    "EPSILON_SCALE_FREE",
    "one_step_bounds",
    "positivity_condition",
    "solve_eta_star",
    "multistep_bounds",
    "constant_rate_multistep_bounds",
    "compose_one_step",
    "interleaving_epsilon",
    "epsilon_from_rate",
    "lower_side_dominates",
    "epsilon_blows_up_at_eta_star",
    "bounds_numeric",
    "eta_star_numeric",
    "epsilon_numeric",
    "multistep_bounds_numeric",
    "interleaving_epsilon_numeric",
    "MultiStepBounds",
]

# --- Symbols ---------------------------------------------------------------------------------------------

#: learning rate η > 0
ETA = sp.Symbol("eta", positive=True)
#: Lipschitz constant K > 0 of the pairwise update differences (K = 0 is handled numerically)
K = sp.Symbol("K", positive=True)
#: number of steps T ≥ 1
T = sp.Symbol("T", integer=True, positive=True)
#: the product ηK as one variable, x ∈ [0, 1) in the preserving phase
X = sp.Symbol("x", nonnegative=True)
#: step index t
STEP = sp.Symbol("t", integer=True, positive=True)
#: per-step learning rates η_t and constants K_t
ETA_T = sp.IndexedBase("eta", positive=True)
K_T = sp.IndexedBase("K", positive=True)

# --- T2: one step ----------------------------------------------------------------------------------------


def one_step_bounds(eta: sp.Expr = ETA, K_: sp.Expr = K) -> tuple[sp.Expr, sp.Expr]:
    """T2: ``(lower, upper) = (1 - eta*K, 1 + eta*K)`` as sympy expressions.

    Every pairwise distance ratio ``‖θ'_i − θ'_j‖ / ‖θ_i − θ_j‖`` of one step lies in ``[lower, upper]``
    when ``‖u_i − u_j‖ ≤ K ‖θ_i − θ_j‖`` for all pairs.  The lower bound is informative only for
    ``eta*K < 1``; for ``eta*K ≥ 1`` the sharp statement is ``max(0, 1 - eta*K) = 0``.
    """
    return (1 - eta * K_, 1 + eta * K_)


#: T2 with the default symbols
ONE_STEP_BOUNDS: tuple[sp.Expr, sp.Expr] = one_step_bounds()

# --- T3: critical learning rate, solved (not typed in) ---------------------------------------------------


def positivity_condition(eta: sp.Symbol = ETA, K_: sp.Symbol = K) -> sp.Rel:
    """The condition under which T2's lower factor is positive: ``1 - eta*K > 0``."""
    return sp.StrictGreaterThan(one_step_bounds(eta, K_)[0], 0)


def solve_eta_star(eta: sp.Symbol = ETA, K_: sp.Symbol = K) -> sp.Expr:
    """T3: solve ``1 - eta*K > 0`` for ``eta`` with sympy and return the supremum of the solution set.

    Two independent solvers are used (``reduce_inequalities`` and ``solveset`` over the reals); they must
    agree, and the solution set must be an open half-line ``(-oo, eta*)`` so that ``eta*`` is a critical
    point (``1 - eta*K > 0`` exactly for ``eta < eta*``).
    """
    cond = positivity_condition(eta, K_)
    reduced = sp.reduce_inequalities([cond], eta)
    if not (isinstance(reduced, sp.StrictLessThan) and reduced.lhs == eta):
        raise TopoverifyError(f"unexpected solution of {cond}: {reduced}")  # pragma: no cover
    solset = sp.solveset(cond, eta, domain=sp.S.Reals)
    if not (isinstance(solset, sp.Interval) and solset.inf == -sp.oo and solset.right_open):
        raise TopoverifyError(f"unexpected solution set of {cond}: {solset}")  # pragma: no cover
    if sp.simplify(reduced.rhs - solset.sup) != 0:
        raise TopoverifyError(f"solvers disagree: {reduced} vs {solset}")  # pragma: no cover
    return sp.simplify(reduced.rhs)


#: η* as solved by sympy (equals 1/K)
ETA_STAR: sp.Expr = solve_eta_star()

# --- T4: multi-step --------------------------------------------------------------------------------------


def multistep_bounds(steps: sp.Expr = T) -> tuple[sp.Product, sp.Product]:
    """T4: ``(prod_{t=1}^{T} (1 - eta_t K_t), prod_{t=1}^{T} (1 + eta_t K_t))`` as unevaluated Products.

    Valid as a lower bound only while every factor is positive (``eta_t K_t < 1`` for all t); otherwise
    the sharp lower bound is 0 (a product of two negative factors is positive and would be *wrong*).
    """
    lo, hi = one_step_bounds(ETA_T[STEP], K_T[STEP])
    return sp.Product(lo, (STEP, 1, steps)), sp.Product(hi, (STEP, 1, steps))


def constant_rate_multistep_bounds(steps: sp.Expr = T) -> tuple[sp.Expr, sp.Expr]:
    """T4 with constant ``eta, K``: evaluates the Products to ``((1 - eta*K)**T, (1 + eta*K)**T)``."""
    lo, hi = multistep_bounds(steps)
    subs = {ETA_T[STEP]: ETA, K_T[STEP]: K}
    # xreplace: a structural substitution (Product.subs refuses to touch terms with its bound index)
    return sp.simplify(lo.xreplace(subs).doit()), sp.simplify(hi.xreplace(subs).doit())


def compose_one_step(n: int) -> tuple[sp.Expr, sp.Expr]:
    """Compose the T2 one-step *ratio bounds* ``n`` times: the bounds that follow for ``d_n / d_0``.

    The ratio telescopes, ``d_n/d_0 = prod_t d_t/d_{t-1}``, and each factor lies in
    ``[1 - eta_t K_t, 1 + eta_t K_t]``; with positive factors the interval product is the product of the
    endpoints.  This function performs the composition step by step (as maps ``r -> r * factor``), so a
    test can compare it with :func:`multistep_bounds` evaluated at ``T = n``.
    """
    if n < 1:
        raise TopoverifyError(f"n must be a positive integer (got {n}); compose at least one step")
    lo: sp.Expr = sp.Integer(1)
    hi: sp.Expr = sp.Integer(1)
    for t in range(1, n + 1):
        step_lo, step_hi = one_step_bounds(ETA_T[t], K_T[t])
        lo, hi = lo * step_lo, hi * step_hi  # r -> r * factor, applied to the running ratio
    return lo, hi


# --- T5: log-scale interleaving constant -----------------------------------------------------------------


def interleaving_epsilon(a: sp.Expr, b: sp.Expr) -> sp.Expr:
    """T5: ``eps(a, b) = max(log b, -log a)`` for pairwise distances scaled by factors in ``[a, b]``, a > 0."""
    return sp.Max(sp.log(b), -sp.log(a))


def lower_side_dominates() -> bool:
    """Prove with sympy that ``-log(1-x) >= log(1+x)`` on ``0 <= x < 1`` (the max picks the lower side).

    ``h(x) = -log(1-x) - log(1+x)`` has ``h(0) = 0`` and ``h'(x) = 2x/(1-x**2) >= 0`` on ``[0, 1)``; sympy
    checks both facts (the set where ``h' < 0`` is empty).  Equivalently ``h(x) = -log(1 - x**2) >= 0``.
    """
    x = sp.Symbol("x", real=True)
    h = -sp.log(1 - x) - sp.log(1 + x)
    dh = sp.simplify(sp.diff(h, x))
    negative_set = sp.solveset(dh < 0, x, domain=sp.Interval.Ropen(0, 1))
    return bool(h.subs(x, 0) == 0 and negative_set == sp.S.EmptySet)


def epsilon_from_rate(eta: sp.Expr = ETA, K_: sp.Expr = K) -> sp.Expr:
    """T5 with ``a = 1 - eta*K``, ``b = 1 + eta*K``: returns ``-log(1 - eta*K)``.

    The reduction of the max to its lower side is proved by :func:`lower_side_dominates` (checked here);
    the result is valid for ``eta*K < 1`` and tends to ``+oo`` as ``eta*K -> 1-``.
    """
    if not lower_side_dominates():  # pragma: no cover - a sympy regression
        raise TopoverifyError("sympy failed to prove -log(1-x) >= log(1+x) on [0, 1)")
    lo, _ = one_step_bounds(eta, K_)
    return -sp.log(lo)


#: ε = −log(1 − ηK)
EPSILON: sp.Expr = epsilon_from_rate()

#: ε up to one global rescaling of the cloud: ½ log(b/a) = artanh(ηK) ≤ ε (see proofs_notes/T5)
EPSILON_SCALE_FREE: sp.Expr = sp.log((1 + ETA * K) / (1 - ETA * K)) / 2


def epsilon_blows_up_at_eta_star() -> bool:
    """Sympy limit: ``-log(1 - x) -> +oo`` as ``x = eta*K -> 1-`` (the T5 bound degenerates at eta*)."""
    return sp.limit(EPSILON.subs(ETA, X / K), X, 1, dir="-") == sp.oo


# --- Numeric versions (lambdified from the expressions above) --------------------------------------------

_TORCH_MODULES = [{"log": torch.log, "exp": torch.exp, "sqrt": torch.sqrt, "atanh": torch.atanh}]


_LAMBDA_CACHE: dict[tuple[str, str], Callable[..., Any]] = {}


def _lambdified(name: str, backend: str) -> Callable[..., Any]:
    key = (name, backend)
    if key not in _LAMBDA_CACHE:
        exprs = {
            "bounds": ONE_STEP_BOUNDS,
            "eta_star": ETA_STAR,
            "epsilon": EPSILON,
        }
        modules = "numpy" if backend == "numpy" else _TORCH_MODULES
        _LAMBDA_CACHE[key] = sp.lambdify((K, ETA), exprs[name], modules=modules)
    return _LAMBDA_CACHE[key]


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _check_array(name: str, value: Any, *, allow_zero: bool, allow_inf: bool, fix: str) -> None:
    arr = value.detach().cpu().double().numpy() if _is_torch(value) else np.asarray(value, dtype=float)
    if np.isnan(arr).any():
        raise TopoverifyError(f"{name} contains NaN; {fix}")
    if not allow_inf and np.isinf(arr).any():
        raise TopoverifyError(f"{name} must be finite (got {arr[np.isinf(arr)].ravel()[0]}); {fix}")
    bad = arr < 0 if allow_zero else arr <= 0
    if bad.any():
        relation = ">= 0" if allow_zero else "> 0"
        raise TopoverifyError(f"{name} must be {relation} (got {arr[bad].ravel()[0]}); {fix}")


K_FIX = "pass the Lipschitz constant K >= 0 (a norm bound; use inf when no finite bound is known)"
LR_FIX = "pass the learning rate lr > 0 (finite)"


def _prepare(K_: Any, lr: Any) -> tuple[str, Any, Any, bool]:
    """Validate and convert to a common backend; returns (backend, K, lr, scalar_input)."""
    _check_array("K", K_, allow_zero=True, allow_inf=True, fix=K_FIX)
    _check_array("lr", lr, allow_zero=False, allow_inf=False, fix=LR_FIX)
    if _is_torch(K_) or _is_torch(lr):
        ref = K_ if _is_torch(K_) else lr
        dtype = ref.dtype if ref.is_floating_point() else torch.float64
        k_t = K_.to(dtype) if _is_torch(K_) else torch.as_tensor(K_, dtype=dtype, device=ref.device)
        lr_t = lr.to(dtype) if _is_torch(lr) else torch.as_tensor(lr, dtype=dtype, device=ref.device)
        return "torch", k_t, lr_t, False
    scalar = np.ndim(K_) == 0 and np.ndim(lr) == 0
    return "numpy", np.asarray(K_, dtype=float), np.asarray(lr, dtype=float), scalar


def _out(x: Any, scalar: bool) -> Any:
    return float(x) if scalar else x


def _where(backend: str, cond: Any, a: Any, b: Any) -> Any:
    if backend == "torch":
        return torch.where(cond, torch.as_tensor(a, dtype=b.dtype, device=b.device), b)
    return np.where(cond, a, b)


def bounds_numeric(K: Any, lr: Any) -> tuple[Any, Any]:  # noqa: N803 - K is the paper's name
    """T2 numerically: ``(1 - lr*K, 1 + lr*K)`` for floats, numpy arrays or torch tensors (broadcast).

    The raw lower factor is returned (it agrees with the sympy expression); a value ``<= 0`` means the
    lower bound is vacuous (the sharp bound is then 0).  ``K = inf`` gives ``(-inf, inf)``.
    """
    backend, k, l, scalar = _prepare(K, lr)
    lo, hi = _lambdified("bounds", backend)(k, l)
    return _out(lo, scalar), _out(hi, scalar)


def eta_star_numeric(K: Any) -> Any:  # noqa: N803
    """T3 numerically: ``1/K``; ``inf`` where ``K == 0`` (no finite critical rate), ``0`` where ``K == inf``."""
    _check_array("K", K, allow_zero=True, allow_inf=True, fix=K_FIX)
    backend, k, _, scalar = _prepare(K, 1.0)
    scalar = scalar and not _is_torch(K)
    fn = _lambdified("eta_star", backend)
    if backend == "torch":
        safe = _where(backend, k == 0, 1.0, k)
        res = _where(backend, k == 0, math.inf, fn(safe, None))
    else:
        safe = np.where(k == 0, 1.0, k)
        res = np.where(k == 0, math.inf, fn(safe, None))
    return _out(res, scalar)


def epsilon_numeric(K: Any, lr: Any) -> Any:  # noqa: N803
    """T5 numerically: ``-log(1 - lr*K)``; ``inf`` where ``lr*K >= 1`` (no interleaving bound)."""
    backend, k, l, scalar = _prepare(K, lr)
    x = k * l
    if backend == "torch":
        x = _where(backend, k == 0, 0.0, x)  # 0 * inf is nan; K = 0 means no motion of distances
    else:
        x = np.where(k == 0, 0.0, x)
    breakdown = x >= 1
    safe_k = _where(backend, breakdown, 0.0, _where(backend, k == 0, 0.0, k))
    res = _lambdified("epsilon", backend)(safe_k, l)
    res = _where(backend, breakdown, math.inf, res) + 0.0  # + 0.0 turns -0.0 (K = 0) into 0.0
    return _out(res, scalar)


_A, _B = sp.symbols("a b", positive=True)
_INTERLEAVING_NUMERIC = sp.lambdify((_A, _B), interleaving_epsilon(_A, _B), modules="math")


def interleaving_epsilon_numeric(a: float, b: float) -> float:
    """T5 numerically for any ratio band ``[a, b]``: ``max(log b, -log a)`` (lambdified from
    :func:`interleaving_epsilon`); ``inf`` when ``a == 0`` (no lower bound on the ratios: no interleaving)."""
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b) or a < 0 or b < a:
        raise TopoverifyError(f"the ratio band needs 0 <= a <= b (got a={a}, b={b}); pass the lower and upper "
                              "factors of the pairwise distances, e.g. a = 1 - lr*K, b = 1 + lr*K")
    if a == 0 or math.isinf(b):
        return math.inf
    return float(_INTERLEAVING_NUMERIC(a, b)) + 0.0


@dataclasses.dataclass(frozen=True)
class MultiStepBounds(ResultMixin):
    """T4 bounds over a run; unpacks as ``lower, upper = multistep_bounds_numeric(...)``.

    ``lower`` is clipped at 0 from the first step whose factor ``1 - lr_t K_t`` is ``<= 0`` onwards
    (``clipped`` is then True and ``first_nonpositive_step`` is its 0-based index).  With ``cumulative=True``
    ``lower``/``upper`` are arrays (or tensors) with the bound after each step.
    """

    lower: Any
    upper: Any
    steps: int
    clipped: bool
    first_nonpositive_step: int | None

    def __iter__(self) -> Iterator[Any]:
        yield self.lower
        yield self.upper

    def __str__(self) -> str:
        if isinstance(self.lower, float):
            lo, hi = fmt(self.lower), fmt(self.upper)
        else:
            lo, hi = f"[{len(self.lower)} cumulative values]", f"[{len(self.upper)} cumulative values]"
        note = (
            f" (lower clipped at 0 from step {self.first_nonpositive_step}: lr*K >= 1 there)"
            if self.clipped
            else ""
        )
        return f"{self.steps}-step ratio bounds: lower {lo}, upper {hi}{note}"


def multistep_bounds_numeric(Ks: Any, lrs: Any, *, cumulative: bool = False) -> MultiStepBounds:  # noqa: N803
    """T4 numerically: ``prod_t (1 - lr_t K_t)`` and ``prod_t (1 + lr_t K_t)`` over a 1-D sequence of steps.

    ``Ks`` and ``lrs`` are 1-D sequences / arrays / tensors of equal length (either may be a scalar, which
    is broadcast).  The lower bound is clipped at 0 once any factor is ``<= 0``: from then on no positive
    lower bound follows (and the raw product of two negative factors would be positive — and wrong).
    The factors are evaluated by the same lambdified expression as :func:`bounds_numeric`.
    """
    backend, k, l, _ = _prepare(Ks, lrs)
    if backend == "torch":
        k, l = torch.broadcast_tensors(torch.atleast_1d(k), torch.atleast_1d(l))
        if k.ndim != 1:
            raise TopoverifyError(f"Ks and lrs must be 1-D (one entry per step); got shape {tuple(k.shape)}")
        lo_f, hi_f = _lambdified("bounds", "torch")(k, l)
        nonpos = lo_f <= 0
        seen = torch.cumsum(nonpos.to(torch.int64), 0) > 0
        lo_c = torch.cumprod(torch.where(seen, torch.zeros_like(lo_f), lo_f), 0)
        hi_c = torch.cumprod(hi_f, 0)
        idx = int(torch.nonzero(nonpos)[0, 0]) if bool(nonpos.any()) else None
        n = int(k.shape[0])
        lower: Any = lo_c if cumulative else (float(lo_c[-1]) if n else 1.0)
        upper: Any = hi_c if cumulative else (float(hi_c[-1]) if n else 1.0)
    else:
        k, l = np.broadcast_arrays(np.atleast_1d(k), np.atleast_1d(l))
        if k.ndim != 1:
            raise TopoverifyError(f"Ks and lrs must be 1-D (one entry per step); got shape {k.shape}")
        lo_f, hi_f = _lambdified("bounds", "numpy")(k, l)
        lo_f, hi_f = np.asarray(lo_f, dtype=float), np.asarray(hi_f, dtype=float)
        nonpos = lo_f <= 0
        seen = np.cumsum(nonpos) > 0
        lo_c = np.cumprod(np.where(seen, 0.0, lo_f))
        hi_c = np.cumprod(hi_f)
        idx = int(np.argmax(nonpos)) if nonpos.any() else None
        n = int(k.shape[0])
        lower = lo_c if cumulative else (float(lo_c[-1]) if n else 1.0)
        upper = hi_c if cumulative else (float(hi_c[-1]) if n else 1.0)
    return MultiStepBounds(lower=lower, upper=upper, steps=n, clipped=idx is not None, first_nonpositive_step=idx)
