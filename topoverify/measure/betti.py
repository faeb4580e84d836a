"""Robust Betti numbers of a neuron cloud with per-feature evidence, and Betti numbers at a fixed scale.

:func:`betti_report` applies the rules of :mod:`topoverify.measure.betti_rules` (log 2 or gap for H_k,
the merge tree for H0) to the diagrams of :func:`topoverify.measure.persistence.persistence`, and says
which counts could flip within a relative margin. β0 is counted on the support: merged neurons (T6) are
one point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from topoverify.errors import TopoverifyError
from topoverify.formatting import ResultMixin, fmt
from topoverify.measure.betti_rules import (
    DEFAULT_LOG_THRESHOLD,
    DEFAULT_MARGIN,
    DEFAULT_MIN_GAP,
    MIN_LOOP_LOG_PERSISTENCE,
    FeatureEvidence,
    check_rule_params,
    h0_robust_components,
    hk_decision,
)
from topoverify.measure.merges import merge_labels, merge_tolerance
from topoverify.measure.persistence import PersistenceResult, check_maxdim, result_of

__all__ = ["BettiReport", "betti_report", "robust_betti", "betti_at_scale", "DUPLICATE_RTOL"]

#: Neurons closer than this (relative to the cloud's radius) are one point of the support.
DUPLICATE_RTOL = 1e-9


def _default_min_cluster_size(n: int) -> int:
    return max(3, int(math.ceil(0.02 * n)))


@dataclass(frozen=True)
class BettiReport(ResultMixin):
    """Robust Betti numbers with their evidence (see :func:`betti_report`).

    ``betti`` (β0, ..., β_maxdim) under ``rule``; ``low``/``high``: the range the counts could take if every
    log-persistence changed by a factor up to e^±``margin`` (``low == high``: certain at that margin);
    ``features``: per-feature evidence (H0: merges of large clusters; H_k: every feature above round-off,
    most persistent first); ``spacing`` the sampling spacing (H0 floor). Subsampled results give the counts
    of the landmark cloud (its diagrams are within ``error_bound`` of the full ones in linear bottleneck,
    which does not bound log-persistence).
    """

    betti: tuple[int, ...]
    low: tuple[int, ...]
    high: tuple[int, ...]
    rule: str
    threshold: float
    min_gap: float
    min_log_persistence: float
    margin: float
    spacing: float
    n_points: int
    n_used: int
    error_bound: float
    features: list[FeatureEvidence] = field(default_factory=list)

    @property
    def uncertain(self) -> bool:
        """Some Betti number could change if a log-persistence moved by ``margin``."""
        return self.low != self.high

    @property
    def uncertain_dims(self) -> tuple[int, ...]:
        return tuple(k for k, (a, b) in enumerate(zip(self.low, self.high)) if a != b)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["uncertain"] = self.uncertain
        d["uncertain_dims"] = list(self.uncertain_dims)
        return d

    def __str__(self) -> str:
        rng = ("" if not self.uncertain else
               f", UNCERTAIN: range {self.low}..{self.high} within a factor e^±{fmt(self.margin, 3)}")
        rule = (f"rule log2 (log-persistence > {fmt(self.threshold, 3)})" if self.rule == "log2" else
                f"rule gap (>= {fmt(self.min_gap, 3)}x the strongest rejected feature, floor "
                f"{fmt(self.min_log_persistence, 3)})")
        lines = [f"Betti {self.betti} by {rule}{rng}"]
        shown = [f for f in self.features if f.accepted or f.uncertain or f.rank <= 1]
        lines += [f"  {f}" for f in shown[:40]]
        if len(shown) > 40:
            lines.append(f"  ... {len(shown) - 40} more")
        return "\n".join(lines)


def betti_report(
    cloud_or_result: Any,
    maxdim: int | None = None,
    threshold: float = DEFAULT_LOG_THRESHOLD,
    *,
    rule: str = "log2",
    min_gap: float = DEFAULT_MIN_GAP,
    min_log_persistence: float = MIN_LOOP_LOG_PERSISTENCE,
    margin: float = DEFAULT_MARGIN,
    min_cluster_size: int | None = None,
    n_perm: int | str | None = "auto",
    spacing_factor: float | None = None,
) -> BettiReport:
    """Robust Betti numbers (β0, ..., β_maxdim) with per-feature evidence and an uncertainty range.

    ``maxdim`` defaults to the result's own (1 for a cloud). Rules for H_k, k >= 1 (``rule=``):

    * ``"log2"`` (default): features with ``log(death / birth) > threshold`` (``log 2``,
      :data:`DEFAULT_LOG_THRESHOLD`: certified features of the union of balls around the sample).
    * ``"gap"``: sort the log-persistences p_1 >= p_2 >= ... (round-off removed, p_{m+1} = 0) and count the
      features above the largest gap: the cut j maximising p_j / p_{j+1} among those with
      p_j >= ``min_gap`` × p_{j+1} (default 3, :data:`DEFAULT_MIN_GAP`) and p_j >= ``min_log_persistence``
      (default ½ log 2, the most a 4-point loop can reach: :data:`MIN_LOOP_LOG_PERSISTENCE`); a cut with
      fewer than :data:`GAP_MIN_BULK` (5) weaker features below it also needs p_j > ``threshold`` (no noise to
      compare with: such a loop is not counted but makes the count uncertain); none: 0.
      It finds thin loops sampled with gaps, whose log-persistence is far above the noise but below log 2
      (a figure-eight of aspect 20, 1024 points: 0.61 and 0.39 against <= 0.12 gives β1 = 2, log 2 gives 0),
      and ignores the many noise holes of dense planar samples that log 2 counts.
    * Why log 2 stays the default (measured in benchmarks/bench_topology.py): on sampled *surfaces* the
      sampling holes form a high continuum (torus: loops at 1.2–2.1 over holes up to 0.8, ratio ~1.5), so the
      gap rule finds no gap and answers 0 where log 2 answers the right (1, 2) in most samples; and log 2
      carries the Čech certificate. Use ``rule="gap"`` for curves and thin loops, and compare both.

    ``spacing_factor`` (both rules): a feature must also die beyond that multiple of the sampling spacing
    (drops holes between samples of a surface; see :func:`robust_betti`). H0 uses the merge-tree rule of
    :func:`~topoverify.measure.betti_rules.h0_robust_components` with ``threshold`` whatever the rule, on
    the support (duplicates once).

    ``margin`` (default 0.1, :data:`DEFAULT_MARGIN`): ``low``/``high`` are the counts if every
    log-persistence p were anywhere in ``[p e^-margin, p e^margin]`` (a relative tolerance, so that it means
    the same for the threshold of log 2 and for the ratios of the gap rule; sorted values stay within the same
    factors); features whose decision flips within it are marked ``uncertain``. For one optimizer step T5
    gives an absolute bound instead: :func:`~topoverify.checks.persistence.betti_bounds_after`.
    """
    check_rule_params(rule, threshold, min_gap, min_log_persistence, margin)
    if maxdim is None:
        maxdim = cloud_or_result.maxdim if isinstance(cloud_or_result, PersistenceResult) else 1
    maxdim = check_maxdim(maxdim)
    res = result_of(cloud_or_result, maxdim, n_perm)
    pts = res.points
    if pts is None:
        raise TopoverifyError("this PersistenceResult carries no points (e.g. rebuilt from to_dict()); pass the cloud.")
    if spacing_factor is not None and not (isinstance(spacing_factor, (int, float)) and spacing_factor > 0):
        raise TopoverifyError(f"spacing_factor must be a positive number or None; got {spacing_factor!r}.")
    # β0 is a property of the support: merged neurons (T6: exact or round-off-level duplicates) count once,
    # so the answer cannot depend on how many copies of a point there are.
    labels = merge_labels(pts, merge_tolerance(pts, DUPLICATE_RTOL, 0.0))
    _, first = np.unique(labels, return_index=True)
    support = pts[np.sort(first)]
    mcs = _default_min_cluster_size(support.shape[0]) if min_cluster_size is None else int(min_cluster_size)
    if mcs < 1:
        raise TopoverifyError(f"min_cluster_size must be >= 1; got {min_cluster_size!r}.")
    beta0, spacing, cands = h0_robust_components(support, threshold, mcs)
    feats: list[FeatureEvidence] = [FeatureEvidence(dim=0, rank=1, birth=0.0, death=math.inf,
                                                    log_persistence=math.inf, ratio_to_next=math.inf,
                                                    accepted=True, by="essential", margin=math.inf)]
    lo0 = hi0 = beta0
    for rank, (h, lr, counted) in enumerate(sorted(cands, key=lambda c: -c[1]), start=2):
        mg = (math.inf if lr == math.inf else -math.inf if lr <= 0 or threshold == 0
              else math.log(lr) - math.log(threshold))
        unc = abs(mg) <= margin
        if unc and counted:
            lo0 -= 1
        elif unc:
            hi0 += 1
        feats.append(FeatureEvidence(dim=0, rank=rank, birth=0.0, death=h, log_persistence=lr,
                                     ratio_to_next=math.nan, accepted=counted,
                                     by="h0-spacing" if counted else "below threshold", margin=mg, uncertain=unc))
    betti, low, high = [beta0], [lo0], [hi0]
    for k in range(1, maxdim + 1):
        c, lo, hi, fk = hk_decision(res.diagrams[k], k, rule, threshold, min_gap, min_log_persistence, margin,
                                     spacing, spacing_factor)
        betti.append(c)
        low.append(lo)
        high.append(hi)
        feats.extend(fk)
    return BettiReport(betti=tuple(betti), low=tuple(low), high=tuple(high), rule=rule, threshold=float(threshold),
                       min_gap=float(min_gap), min_log_persistence=float(min_log_persistence), margin=float(margin),
                       spacing=float(spacing), n_points=res.n_points, n_used=res.n_used,
                       error_bound=float(res.error_bound), features=feats)


def robust_betti(
    cloud_or_result: Any,
    maxdim: int | None = None,
    threshold: float = DEFAULT_LOG_THRESHOLD,
    *,
    rule: str = "log2",
    min_gap: float = DEFAULT_MIN_GAP,
    min_log_persistence: float = MIN_LOOP_LOG_PERSISTENCE,
    min_cluster_size: int | None = None,
    n_perm: int | str | None = "auto",
    spacing_factor: float | None = None,
) -> tuple[int, ...]:
    """Betti numbers (β0, ..., β_maxdim) counting only features that persist on a log scale.

    ``maxdim`` defaults to the result's own (a result computed with ``maxdim=2`` gives (β0, β1, β2)), and to
    1 for a cloud. The counts are :func:`betti_report`'s (which also gives the evidence per feature and
    whether the counts are uncertain):

    * k >= 1, ``rule="log2"`` (default): the number of H_k points with ``log(death / birth) > threshold``
      (essential classes count). Default ``threshold = log 2`` (:data:`DEFAULT_LOG_THRESHOLD`: a Rips
      feature that lives longer than a factor 2 is certified to be a feature of the union of balls around the
      sample). The union of balls has holes of its own between neighbouring samples of a *surface*: on
      200–300 uniform points of S² they reach log-persistence 0.9 > log 2. With ``spacing_factor`` (e.g. 3)
      a feature must also die beyond that multiple of the sampling spacing (the H0 floor below): those holes
      die by 2.1× the spacing, while the features of dense samples of circles, spheres, tori, two circles and
      figure-eights die beyond 3.4× (measured). It is off by default because sparse samples (a circle of
      8–10 points, a torus of a few hundred) have true features dying within 3× their spacing.
    * k >= 1, ``rule="gap"``: the features above the largest gap of the log-persistence spectrum (at least
      ``min_gap`` = 3 times the strongest rejected feature, and above ``min_log_persistence`` = ½ log 2):
      finds thin loops sampled with gaps that log 2 misses. See :func:`betti_report` for why log 2 stays
      the default (sampled surfaces).
    * k = 0: computed on the support (neurons within ``DUPLICATE_RTOL`` of the cloud's radius count once, so
      multiplicities from merged neurons do not matter); births are 0, so the rule is scale-relative: a merge
      of two single-linkage clusters at height d counts iff both have at least ``min_cluster_size`` points
      (default ``max(3, ceil(0.02 N))``) and d exceeds ``exp(threshold)`` times every non-counted merge
      height below it (the sampling spacing; see
      :func:`~topoverify.measure.betti_rules.h0_robust_components`); the infinite bar counts as 1.

    With a subsampled :class:`PersistenceResult` (``n_perm``) the count is that of the landmark cloud,
    whose diagrams are within ``error_bound`` of the full ones.
    """
    return betti_report(cloud_or_result, maxdim, threshold, rule=rule, min_gap=min_gap,
                        min_log_persistence=min_log_persistence, margin=0.0, min_cluster_size=min_cluster_size,
                        n_perm=n_perm, spacing_factor=spacing_factor).betti


def betti_at_scale(cloud_or_result: Any, scale: float, maxdim: int | None = None, *,
                   n_perm: int | str | None = "auto") -> tuple[int, ...]:
    """Betti numbers of the Rips complex at filtration value ``scale`` (edge length): the number of
    features with ``birth <= scale < death`` in each dimension 0..maxdim (default: the result's maxdim,
    or 1 for a cloud).

    This is the fixed-scale method (build the Rips complex at one scale, count homology); its answer
    depends on the choice of scale, which :func:`robust_betti` avoids.
    """
    if not (isinstance(scale, (int, float, np.floating)) and math.isfinite(scale) and scale >= 0):
        raise TopoverifyError(f"scale must be a finite filtration value >= 0 (an edge length); got {scale!r}.")
    if maxdim is None:
        maxdim = cloud_or_result.maxdim if isinstance(cloud_or_result, PersistenceResult) else 1
    res = result_of(cloud_or_result, check_maxdim(maxdim), n_perm)
    return tuple(
        int(np.sum((d[:, 0] <= scale) & (d[:, 1] > scale))) for d in res.diagrams[: maxdim + 1]
    )
