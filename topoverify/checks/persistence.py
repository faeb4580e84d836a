"""T5's checker: log-scale persistence stability of a neuron cloud across one map (e.g. one optimizer step).

T5 (``spec/claims.toml``, ``proofs_notes/T5_persistence.md``): if every pairwise distance is multiplied by a
factor in ``[a, b]``, 0 < a <= b, the Rips filtrations before and after are multiplicatively interleaved,
so in log coordinates ``(log birth, log death)`` the diagrams of every homology dimension are within
bottleneck distance ``eps = max(log b, -log a)`` (H0 through its sorted finite log deaths, D4). For a step,
a = 1 - lr K and b = 1 + lr K give ``eps = -log(1 - lr K)``, finite exactly below eta* = 1/K. Every feature
with log-persistence ``> 2 eps`` survives, and a robust (log 2) count moves only within
:func:`betti_bounds_after`. ε comes from :mod:`topoverify.symbolic` (``interleaving_epsilon_numeric``,
``epsilon_numeric``), never from a formula typed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from topoverify.errors import TopoverifyError
from topoverify.formatting import NOT_SERIALIZED, ResultMixin, fmt
from topoverify.measure.betti import robust_betti
from topoverify.measure.betti_rules import DEFAULT_LOG_THRESHOLD
from topoverify.measure.diagram_distance import log_bottleneck
from topoverify.measure.persistence import PersistenceResult, as_cloud, as_diagram, check_maxdim, persistence
from topoverify.symbolic import bounds_numeric, epsilon_numeric, interleaving_epsilon_numeric

__all__ = ["stability_epsilon", "surviving_features", "betti_bounds_after", "check_persistence_stability",
           "PersistenceStabilityCheck", "LOG_TOLERANCE", "RESOLVED_FACTOR", "HOLDS", "VIOLATED", "VACUOUS",
           "INCONCLUSIVE"]

#: Float tolerance of the check on a log scale, from the rounding of ripser's diagrams. Ripser stores the
#: distance matrix in float32 and every diagram value is one of its entries, so each value carries a relative
#: rounding |δ| <= u = 2^-24 (≈ 6e-8), i.e. at most ≈ u in log scale (the float64 distances and logs add
#: ~1e-15). A log-scale bottleneck distance compares one rounded value from each diagram: it is off by at
#: most 2u. The constant is 4u ≈ 2.4e-7: 2u with a factor 2 of slack.
LOG_TOLERANCE = 4 * 2.0 ** -24

#: ε counts as clearly above the rounding when ε > RESOLVED_FACTOR × LOG_TOLERANCE: then a measured
#: distance within ε + tolerance can exceed ε by at most 2 × tolerance / ε < 2 % of ε. Below that, a
#: distance between ε and ε + tolerance could be rounding or a violation of the size of ε itself:
#: verdict "inconclusive".
RESOLVED_FACTOR = 100.0

HOLDS, VIOLATED, VACUOUS, INCONCLUSIVE = "holds", "violated", "vacuous", "inconclusive"


def _log_persistence(d: np.ndarray) -> np.ndarray:
    """log(death / birth) of the off-diagonal points of a validated diagram (inf for births 0 or deaths inf)."""
    d = d[d[:, 1] > d[:, 0]]
    with np.errstate(divide="ignore"):
        return np.log(d[:, 1]) - np.log(d[:, 0])


def _check_eps(eps: Any) -> float:
    if not (isinstance(eps, (int, float, np.floating)) and eps >= 0):
        raise TopoverifyError(f"eps must be >= 0 (see stability_epsilon); got {eps!r}.")
    return float(eps)


def stability_epsilon(a: float, b: float) -> float:
    """T5: the log-scale bottleneck bound ``eps(a, b)`` when every pairwise distance is scaled by a factor in
    [a, b] (0 <= a <= b < inf), from :func:`topoverify.symbolic.interleaving_epsilon_numeric`. ``a = 0``
    (points may merge) gives ``inf``."""
    if not (a >= 0 and b >= a and math.isfinite(b)):
        raise TopoverifyError(f"need 0 <= a <= b < inf for distance-ratio bounds [a, b]; got a={a!r}, b={b!r}.")
    return interleaving_epsilon_numeric(a, b)


def surviving_features(dgm: Any, eps: float) -> np.ndarray:
    """T5: the points of ``dgm`` whose log-persistence ``log(death/birth)`` exceeds ``2 eps``; these are
    guaranteed to survive any map with log-bottleneck distortion ``eps``. H0 points (birth 0) have
    infinite log-persistence and always survive (distinct points stay distinct under a bi-Lipschitz map);
    zero-persistence points never do."""
    d = as_diagram(dgm)
    eps = _check_eps(eps)
    d = d[d[:, 1] > d[:, 0]]
    return d[_log_persistence(d) > 2 * eps]


def betti_bounds_after(diagram: Any, eps: float, *, threshold: float = DEFAULT_LOG_THRESHOLD
                       ) -> tuple[int, int | float]:
    """T5 for the log-2 count of one H_k diagram (k >= 1): bounds on the count after any map with
    log-bottleneck distortion ``<= eps`` (a step below η* with ``eps = epsilon_numeric(K, lr)``).

    A feature with log-persistence p is matched to one with p' >= p - 2 eps, or (if p <= 2 eps) possibly to
    the diagonal; a feature of the image not matched to one of the diagram has p' <= 2 eps. Hence, with
    c(t) = #{p > t}:

    * the count after is at least ``c(threshold + 2 eps)`` (strong features survive above the threshold);
    * if ``2 eps < threshold`` no new feature can reach the threshold, and the count after is at most
      ``c(threshold - 2 eps)``; otherwise it is unbounded (``inf``): new features of log-persistence up to
      2 eps can appear.

    Returns (lower, upper). The count is unchanged for sure only when ``2 eps < threshold`` and no feature
    lies within 2 eps of the threshold (then lower = upper = the count now).
    """
    lp = _log_persistence(as_diagram(diagram))
    eps = _check_eps(eps)
    lower = int(np.sum(lp > threshold + 2 * eps))
    upper: int | float = int(np.sum(lp > threshold - 2 * eps)) if 2 * eps < threshold else math.inf
    return lower, upper


# --------------------------------------------------------------------------------------------------
# the checker
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PersistenceStabilityCheck(ResultMixin):
    """T5 held against the clouds before and after a map (see :func:`check_persistence_stability`).

    ``a``, ``b``: the ratio band; ``K``, ``lr`` when the band came from a step (a = 1 - lr K, b = 1 + lr K);
    ``epsilon``: the T5 bound (``inf``: vacuous); ``distances[k]``: the log-scale bottleneck distance of the
    H_k diagrams; ``within[k]``: ``distances[k] <= epsilon + tolerance``; ``surviving[k]``: features of the
    H_k diagram before with log-persistence > 2 (epsilon + tolerance), guaranteed to survive;
    ``alive_after[k]``: features of the H_k diagram after with positive log-persistence (at least
    ``surviving[k]`` when T5 holds); ``betti_before``/``betti_after``: robust (log 2) counts;
    ``betti_bounds[k - 1]``: the range T5 allows for the count of H_k after (:func:`betti_bounds_after` with
    ``epsilon + tolerance``). ``verdict``: ``"holds"``, ``"violated"`` (a distance above ε + tolerance, or
    a feature or count outside T5's range), ``"inconclusive"`` (ε within :data:`RESOLVED_FACTOR` × tolerance
    of 0 and a distance between ε and ε + tolerance: rounding cannot be told from a violation) or
    ``"vacuous"`` (ε infinite: a <= 0, i.e. lr K >= 1; nothing is claimed). ``n_used`` < ``n_points``: both clouds were restricted to the same
    greedy landmarks of the cloud before (the map restricted to them satisfies the same band, so T5 holds
    for them exactly). ``persistence_before``/``persistence_after``: the diagrams (not in ``to_dict``).
    """

    a: float
    b: float
    K: float | None
    lr: float | None
    epsilon: float
    tolerance: float
    maxdim: int
    distances: tuple[float, ...]
    within: tuple[bool, ...]
    surviving: tuple[int, ...]
    alive_after: tuple[int, ...]
    betti_before: tuple[int, ...]
    betti_after: tuple[int, ...]
    betti_bounds: tuple[tuple[int, int | float], ...]
    n_points: int
    n_used: int
    verdict: str
    persistence_before: PersistenceResult | None = field(default=None, repr=False, compare=False,
                                                         metadata=NOT_SERIALIZED)
    persistence_after: PersistenceResult | None = field(default=None, repr=False, compare=False,
                                                        metadata=NOT_SERIALIZED)

    @property
    def holds(self) -> bool:
        return self.verdict == HOLDS

    @property
    def distance(self) -> float:
        """The largest log-scale bottleneck distance over H0..H_maxdim."""
        return max(self.distances)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "holds": self.holds}

    def __str__(self) -> str:
        band = f"a={fmt(self.a)}, b={fmt(self.b)}"
        if self.K is not None:
            band = f"lr={fmt(self.lr)}, K={fmt(self.K)}, lr·K={fmt(self.lr * self.K)}: {band}"
        dims = "; ".join(f"H{k}: {fmt(d)} {'<=' if ok else '>'} ε" for k, (d, ok) in
                         enumerate(zip(self.distances, self.within)))
        sub = "" if self.n_used == self.n_points else f" on {self.n_used}/{self.n_points} shared landmarks"
        allowed = ", ".join(f"H{k} in [{lo}, {hi}]" for k, (lo, hi) in enumerate(self.betti_bounds, start=1))
        return (f"T5 {self.verdict.upper()}: ε = {fmt(self.epsilon)} ({band}, tolerance {fmt(self.tolerance, 2)})"
                f"{sub}; log-bottleneck {dims}; surviving features per dimension {self.surviving}; robust Betti "
                f"{self.betti_before} -> {self.betti_after}" + (f" (T5 allows {allowed})" if allowed else ""))


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or math.isnan(value):
        raise TopoverifyError(f"{name} must be a real number; got {value!r}.")
    return float(value)


def _band(a: Any, b: Any, K: Any, lr: Any) -> tuple[float, float, float, float | None, float | None]:
    """(a, b, eps, K, lr) from either the ratio band or (K, lr), validated; eps from topoverify.symbolic."""
    have_band, have_rate = (a is not None or b is not None), (K is not None or lr is not None)
    if have_band == have_rate:
        raise TopoverifyError(
            "pass either the ratio band (a=, b=: every pairwise distance after is between a and b times the "
            "distance before) or the step's constant and rate (K=, lr=: a = 1 - lr K, b = 1 + lr K), not "
            f"{'both' if have_band else 'neither'}.")
    if have_band:
        if a is None or b is None:
            raise TopoverifyError(f"the ratio band needs both a= and b=; got a={a!r}, b={b!r}.")
        a, b = _number("a", a), _number("b", b)
        if a > b or b <= 0:
            raise TopoverifyError(f"the ratio band needs a <= b and b > 0 (a: the smallest factor by which a pairwise "
                                  f"distance can shrink, b: the largest it can grow); got a={a}, b={b}.")
        eps = math.inf if a <= 0 else interleaving_epsilon_numeric(a, b)
        return a, b, eps, None, None
    if K is None or lr is None:
        raise TopoverifyError(f"a step's band needs both K= and lr=; got K={K!r}, lr={lr!r}.")
    K, lr = _number("K", K), _number("lr", lr)
    if K < 0 or lr <= 0 or math.isinf(lr):
        raise TopoverifyError(f"K must be >= 0 (a Lipschitz constant, inf allowed) and lr a finite rate > 0 (the "
                              f"step's learning rate); got K={K}, lr={lr}.")
    lo, hi = bounds_numeric(K, lr)
    return float(lo), float(hi), float(epsilon_numeric(K, lr)), K, lr


def check_persistence_stability(before: Any, after: Any, *, a: float | None = None, b: float | None = None,
                                K: float | None = None, lr: float | None = None, maxdim: int = 1,
                                n_perm: int | str | None = "auto") -> PersistenceStabilityCheck:
    """Check T5 on the clouds ``before`` and ``after`` (N × d each, same neurons in the same rows; numpy or
    torch) against the band ``[a, b]`` or a step's ``K`` and ``lr`` (a = 1 - lr K, b = 1 + lr K).

    ε comes from :mod:`topoverify.symbolic` (``interleaving_epsilon_numeric(a, b)``, or ``epsilon_numeric(K,
    lr)``) and must be fixed before the clouds are seen: a band measured from the two clouds themselves
    makes the check hold by construction. Per homology dimension 0..``maxdim`` the log-scale bottleneck
    distance (H0: sorted finite log deaths, D4) is compared with ε + :data:`LOG_TOLERANCE`; the features of
    ``before`` with log-persistence > 2 (ε + tolerance) must survive, and each robust (log 2) count of
    ``after`` must lie in the range of :func:`betti_bounds_after`. Verdict ``"vacuous"`` when ε is infinite
    (a <= 0: lr K >= 1), ``"violated"`` when any of these fails, ``"inconclusive"`` when ε is not clearly
    above the rounding (ε <= :data:`RESOLVED_FACTOR` × tolerance) and a distance lies in (ε, ε + tolerance],
    else ``"holds"``. Clouds above :data:`~topoverify.measure.persistence.EXACT_LIMITS`
    (``n_perm="auto"``) or with an explicit ``n_perm`` are restricted to the greedy landmarks of ``before``,
    the same rows on both sides.
    """
    lo, hi, eps, K, lr = _band(a, b, K, lr)
    x0, x1 = as_cloud(before, "before"), as_cloud(after, "after")
    if x0.shape[0] != x1.shape[0]:
        raise TopoverifyError(f"before has {x0.shape[0]} neurons and after {x1.shape[0]}; T5 compares the same "
                              "neurons before and after a map: pass both clouds with one row per neuron, same order.")
    maxdim = check_maxdim(maxdim)
    res0 = persistence(x0, maxdim=maxdim, n_perm=n_perm)
    rows = res0.landmarks
    res1 = persistence(x1 if rows is None else x1[rows], maxdim=maxdim, n_perm=None)
    tol = LOG_TOLERANCE
    distances = tuple(log_bottleneck(p, q) for p, q in zip(res0.diagrams, res1.diagrams))
    within = tuple(bool(d <= eps + tol) for d in distances)
    surviving = tuple(len(surviving_features(p, eps + tol)) for p in res0.diagrams)
    alive = tuple(int(np.sum(_log_persistence(q) > 0)) for q in res1.diagrams)
    betti0, betti1 = robust_betti(res0), robust_betti(res1)
    bounds = tuple(betti_bounds_after(res0.diagrams[k], eps + tol) for k in range(1, maxdim + 1))
    counts_ok = all(lower <= betti1[k] <= upper for k, (lower, upper) in enumerate(bounds, start=1))
    if math.isinf(eps):
        verdict = VACUOUS
    elif not (all(within) and all(n1 >= n0 for n0, n1 in zip(surviving, alive)) and counts_ok):
        verdict = VIOLATED
    elif eps <= RESOLVED_FACTOR * tol and any(d > eps for d in distances):
        verdict = INCONCLUSIVE
    else:
        verdict = HOLDS
    return PersistenceStabilityCheck(
        a=lo, b=hi, K=K, lr=lr, epsilon=eps, tolerance=tol, maxdim=maxdim, distances=distances, within=within,
        surviving=surviving, alive_after=alive, betti_before=betti0, betti_after=betti1, betti_bounds=bounds,
        n_points=x0.shape[0], n_used=res0.n_used, verdict=verdict, persistence_before=res0, persistence_after=res1)
