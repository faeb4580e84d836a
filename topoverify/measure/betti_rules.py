"""The rules that decide which persistence features count as robust Betti features, and their thresholds.

H_k, k >= 1: ``"log2"`` (log-persistence above log 2, a certified feature of the union of balls) or ``"gap"``
(the features above the largest gap of the log-persistence spectrum); H0: the single-linkage merge tree,
relative to the cloud's own sampling spacing. :func:`topoverify.measure.betti.betti_report` applies them.
For one optimizer step, T5 (``spec/claims.toml``) bounds how far a count can move:
:func:`topoverify.checks.persistence.betti_bounds_after`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import linkage

from topoverify.errors import TopoverifyError
from topoverify.formatting import ResultMixin, fmt
from topoverify.measure.persistence import DENSE_PDIST_LIMIT, pairwise_distances

__all__ = ["DEFAULT_LOG_THRESHOLD", "DEFAULT_MIN_GAP", "MIN_LOOP_LOG_PERSISTENCE", "GAP_MIN_BULK", "DEFAULT_MARGIN",
           "RULES", "FeatureEvidence", "check_rule_params", "h0_robust_components", "hk_decision"]

#: Default log-persistence threshold of :func:`~topoverify.measure.betti.robust_betti`: ``log 2``. Why: in
#: R^d the Rips filtration (by edge length) and the Čech filtration (union of balls, by diameter) are multiplicatively
#: interleaved with constant sqrt(2) (Jung's theorem: Čech(r) ⊆ Rips(r) ⊆ Čech(sqrt(2) r) with balls
#: of radius r/2), i.e. within ``eps = log(sqrt 2)`` on the log scale. By the same "survives if
#: log-persistence > 2 eps" argument as T5, a Rips feature with ``log(death/birth) > log 2`` is
#: certified to be a feature of the union of balls (the offsets of the sample), not a Rips artefact.
DEFAULT_LOG_THRESHOLD = math.log(2.0)

#: Gap rule (``rule="gap"``): the weakest accepted feature must be at least this many times more
#: log-persistent than the strongest rejected one. Measured on pure noise (uniform and Gaussian clouds in
#: R^2, R^3, R^10, 40 seeds each): with 3, the floor and :data:`GAP_MIN_BULK`, 5 of 1800 clouds of 6–150
#: points get a spurious loop (log 2: 30) and none of 48 clouds of 100–1000 points (log 2: 8); with 2.5, 12
#: of the 1800; with 2, 32. The loops of thin ellipses and figure-eights (aspect 10–20, 256–1024 points)
#: stand 3.2–10 times above their noise (benchmarks/bench_topology.py).
DEFAULT_MIN_GAP = 3.0

#: Gap rule floor: ``log sqrt 2 = ½ log 2``. A Rips H1 class carried by 4 points is born at the longest
#: side of the quadrilateral and dies by its shorter diagonal, which is at most sqrt(2) times that side
#: (Euler's quadrilateral identity: the squared sides sum to the squared diagonals plus a non-negative
#: term, in any inner-product space). So log-persistence up to ½ log 2 is what the smallest loop, four
#: points of noise, can reach; the gap rule accepts nothing below it, whatever the gap.
MIN_LOOP_LOG_PERSISTENCE = 0.5 * math.log(2.0)

#: Gap rule: a gap below fewer than this many weaker features is no evidence (nothing to call noise); such
#: a cut needs the feature above it to pass log 2 as well, and otherwise only makes the count uncertain
#: (0 counted, range up to it). Measured on pure noise: it removes the false loops of clouds of 6–20 points
#: (13 of 1000 clouds without it, 0 with it); a sparse sample of a circle with one gap and no noise
#: features is then "0, uncertain up to 1" rather than 1.
GAP_MIN_BULK = 5

#: Default uncertainty margin of :func:`~topoverify.measure.betti.betti_report` and the sweep, relative: a
#: feature whose decision would flip if its log-persistence changed by a factor e^±0.1 (about 10 %) makes the
#: count *uncertain*. A convention, not a theorem; for one optimizer step T5 gives an absolute bound, 2 eps
#: (see :func:`~topoverify.checks.persistence.betti_bounds_after`).
DEFAULT_MARGIN = 0.1

#: The rules of :func:`~topoverify.measure.betti.robust_betti` for H_k, k >= 1.
RULES = ("log2", "gap")

#: ripser's float32 values: log-persistence below this is round-off
ROUNDOFF_LOG_PERSISTENCE = 1e-5


def check_rule_params(rule: str, threshold: float, min_gap: float, min_lp: float, margin: float) -> None:
    """Raise TopoverifyError naming the parameter of a robust-Betti rule that is out of range."""
    if rule not in RULES:
        raise TopoverifyError(f"rule must be one of {RULES} ('log2': log-persistence > threshold; 'gap': "
                              f"features above the largest gap of the spectrum); got {rule!r}.")
    if not (isinstance(threshold, (int, float)) and threshold >= 0 and math.isfinite(threshold)):
        raise TopoverifyError(f"threshold is a log-ratio and must be a finite number >= 0; got {threshold!r}.")
    if not (isinstance(min_gap, (int, float)) and min_gap > 1 and math.isfinite(min_gap)):
        raise TopoverifyError(f"min_gap is a ratio of log-persistences and must be finite and > 1; got {min_gap!r}.")
    if not (isinstance(min_lp, (int, float)) and min_lp >= 0 and math.isfinite(min_lp)):
        raise TopoverifyError(f"min_log_persistence must be finite and >= 0; got {min_lp!r}.")
    if not (isinstance(margin, (int, float)) and margin >= 0 and math.isfinite(margin)):
        raise TopoverifyError(f"margin is a log-persistence tolerance and must be finite and >= 0; got {margin!r}.")


def h0_robust_components(points: np.ndarray, threshold: float, min_cluster_size: int
                         ) -> tuple[int, float, list[tuple[float, float, bool]]]:
    """Robust β0 from the single-linkage merge tree (the H0 persistence of the Rips filtration).

    H0 classes are all born at 0, so ``log(death/birth)`` is infinite for every one of them; the rule is
    relative to the cloud's own sampling spacing instead. Walk the single-linkage merges (the H0 deaths,
    i.e. the minimum-spanning-tree edges) in increasing order, keeping ``floor`` = the largest merge height
    seen so far that was not counted. A merge of clusters A and B at height d counts as a separate
    component iff both contain at least ``min_cluster_size`` points and ``log(d / floor) > threshold``:
    the gap that separates them is more than ``exp(threshold)`` times every noise-level gap of the cloud.
    Small clumps and single outliers (sampling noise) never count; a counted merge does not raise the
    floor, so k equally spaced clusters give k. β0 = 1 + number of counted merges. (Checked empirically:
    no spurious components on uniform samples of a circle, a sphere or a Gaussian blob for N >= 30.)
    Returns (β0, floor, candidates): the floor is the cloud's sampling spacing, also used for k >= 1;
    candidates are (height, log(height / floor at that merge), counted) for every merge of two clusters
    of at least ``min_cluster_size`` points (the evidence).
    """
    n = points.shape[0]
    if n <= 1:
        return n, 0.0, []
    if n * n * points.shape[1] / 2 <= DENSE_PDIST_LIMIT:
        z = linkage(points, method="single")
    else:
        dm = pairwise_distances(points)
        z = linkage(dm[np.triu_indices(n, 1)], method="single")
    size = np.ones(2 * n - 1, dtype=np.int64)
    floor = 0.0  # largest merge height so far that was not counted: the cloud's sampling spacing
    count = 0
    candidates: list[tuple[float, float, bool]] = []
    for k, (a, b, d, sz) in enumerate(z):
        a, b = int(a), int(b)
        big = min(size[a], size[b]) >= min_cluster_size and d > 0
        ratio = math.inf if floor == 0 else math.log(d / floor) if d > 0 else -math.inf
        counted = big and ratio > threshold
        if big:
            candidates.append((float(d), ratio, bool(counted)))
        count += int(counted)
        size[n + k] = int(sz)
        if not counted:
            floor = max(floor, float(d))
    return 1 + count, floor, candidates


@dataclass(frozen=True)
class FeatureEvidence(ResultMixin):
    """Why one feature was or was not counted by :func:`~topoverify.measure.betti.betti_report`.

    ``dim`` k, ``birth``/``death`` (for H0 candidates: 0 and the merge height), ``log_persistence``
    (H_k: log(death/birth); H0: log(height / sampling spacing)), ``rank`` (1 = most persistent in its
    dimension), ``ratio_to_next``: log-persistence over that of the next weaker feature (the gap rule's
    evidence; inf when it is the weakest above round-off), ``accepted`` and ``by`` (the rule that accepted
    it: ``"log2"``, ``"gap"``, ``"h0-spacing"`` or ``"essential"``; for a rejected feature the reason:
    ``"below threshold"``, ``"no gap"``, ``"below floor"``, ``"spacing"``). ``margin``: how far the decision
    is from flipping, as the log of the factor by which log-persistences would have to change (positive:
    accepted with that room, negative: rejected by that much). ``uncertain``: the decision flips within the
    report's margin.
    """

    dim: int
    rank: int
    birth: float
    death: float
    log_persistence: float
    ratio_to_next: float
    accepted: bool
    by: str
    margin: float
    uncertain: bool = False

    def __str__(self) -> str:
        verdict = f"counted ({self.by})" if self.accepted else f"not counted ({self.by})"
        unc = ", UNCERTAIN" if self.uncertain else ""
        return (f"H{self.dim} #{self.rank}: ({fmt(self.birth)}, {fmt(self.death)}) log-persistence "
                f"{fmt(self.log_persistence, 3)}, x{fmt(self.ratio_to_next, 3)} the next; {verdict}, margin "
                f"{fmt(self.margin, 3)}{unc}")


def hk_decision(d: np.ndarray, k: int, rule: str, threshold: float, min_gap: float, min_lp: float,
                margin: float, spacing: float, spacing_factor: float | None
                ) -> tuple[int, int, int, list[FeatureEvidence]]:
    """Count, range (low, high) and per-feature evidence for one H_k diagram (k >= 1)."""
    d = d[d[:, 1] > d[:, 0]]
    with np.errstate(divide="ignore"):
        lp = np.log(d[:, 1]) - np.log(d[:, 0])
    keep = lp > ROUNDOFF_LOG_PERSISTENCE
    d, lp = d[keep], lp[keep]
    order = np.argsort(-lp, kind="stable")
    d, lp = d[order], lp[order]
    m = len(lp)
    nxt = np.append(lp[1:], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(nxt > 0, lp / np.where(nxt > 0, nxt, 1.0), np.inf)
    ratio[np.isinf(lp) & np.isinf(nxt)] = 1.0
    spaced = np.ones(m, dtype=bool) if spacing_factor is None else d[:, 1] > spacing_factor * spacing
    accepted = np.zeros(m, dtype=bool)
    fmargin = np.zeros(m)
    by = [""] * m
    if rule == "log2":
        accepted = (lp > threshold) & spaced
        with np.errstate(divide="ignore"):
            fmargin = np.log(lp) - math.log(threshold) if threshold > 0 else np.full(m, np.inf)
        low = int(np.sum((lp > threshold * math.exp(margin)) & spaced))
        high = int(np.sum((lp > threshold * math.exp(-margin)) & spaced))
        count = int(np.sum(accepted))
        for i in range(m):
            by[i] = "log2" if accepted[i] else ("spacing" if not spaced[i] else "below threshold")
        unc_low, unc_high = low, high
    else:
        ess = np.isinf(lp) & spaced
        idx = np.nonzero(spaced & ~np.isinf(lp))[0]  # the finite spectrum the gap is looked for in
        p = lp[idx]
        q = np.append(p[1:], 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(q > 0, p / np.where(q > 0, q, 1.0), np.inf)
        bulk_ok = (len(p) - 1 - np.arange(len(p))) >= GAP_MIN_BULK  # enough weaker features to call noise
        valid = (p >= min_lp) & (p >= min_gap * q) & (bulk_ok | (p > threshold))
        up, down = math.exp(margin), math.exp(-margin)
        robust = (p * down >= min_lp) & (p * down >= min_gap * q * up) & (bulk_ok | (p * down > threshold))
        possible = (p * up >= min_lp) & (p * up >= min_gap * q * down)  # a lone loop without noise: possible
        n_ess = int(np.sum(ess))
        cut = 0
        if valid.any():
            cand = np.nonzero(valid)[0]
            best = cand[np.argmax(r[cand] + 1e-12 * cand)]  # the largest gap (the deeper one on a tie)
            cut = int(best) + 1
        pos = np.nonzero(possible)[0]
        high = n_ess + (int(pos.max()) + 1 if pos.size else 0)
        low = n_ess + (int(pos.min()) + 1 if pos.size and robust.any() else 0)
        count = n_ess + cut
        # margins: accepted features share the chosen cut's margin; a rejected one needs a cut at or below it
        with np.errstate(divide="ignore"):  # relative (log-factor) change that makes cut j valid / invalid
            to_gap = 0.5 * (np.log(p) - np.log(min_gap * q))  # +inf when q = 0
            to_floor = np.log(p) - math.log(min_lp) if min_lp > 0 else np.full(len(p), np.inf)
            to_thr = np.where(bulk_ok, np.inf, np.log(p) - math.log(threshold) if threshold > 0 else np.inf)
        need = np.maximum(np.maximum(np.maximum(-to_gap, -to_floor), -to_thr), 0.0)
        suffix = np.minimum.accumulate(need[::-1])[::-1] if need.size else need
        cut_margin = 0.0
        if cut:
            j = cut - 1
            cut_margin = float(min(to_gap[j], to_floor[j], to_thr[j]))
        accepted[ess] = True
        for i in np.nonzero(ess)[0]:
            by[i], fmargin[i] = "essential", math.inf
        for rank0, i in enumerate(idx):
            ratio[i] = r[rank0]  # the gap within the spectrum the rule read (spacing-rejected features left out)
            if rank0 < cut:
                accepted[i], by[i], fmargin[i] = True, "gap", cut_margin
            else:
                accepted[i] = False
                by[i] = "below floor" if p[rank0] < min_lp else "no gap"
                fmargin[i] = -float(suffix[rank0])
        for i in np.nonzero(~spaced)[0]:
            by[i], fmargin[i] = "spacing", -math.inf
        unc_low, unc_high = low - n_ess, high - n_ess
    feats: list[FeatureEvidence] = []
    spaced_rank = 0
    for i in range(m):
        if spaced[i] and (rule == "log2" or not np.isinf(lp[i])):
            spaced_rank += 1
            unc = unc_low < spaced_rank <= unc_high
        else:
            unc = False
        feats.append(FeatureEvidence(dim=k, rank=i + 1, birth=float(d[i, 0]), death=float(d[i, 1]),
                                     log_persistence=float(lp[i]), ratio_to_next=float(ratio[i]),
                                     accepted=bool(accepted[i]), by=by[i], margin=float(fmargin[i]),
                                     uncertain=bool(unc)))
    return count, low, high, feats
