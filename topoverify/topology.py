"""Public facade ``from topoverify import topology``: persistence, robust Betti numbers, diagram distances, T5 and T6.

Each name is implemented in one module:

* :mod:`topoverify.measure.persistence` — Rips diagrams (ripser) with certified subsampling;
* :mod:`topoverify.measure.betti` and :mod:`topoverify.measure.betti_rules` — robust Betti numbers;
* :mod:`topoverify.measure.diagram_distance` — linear and log-scale bottleneck distances;
* :mod:`topoverify.checks.persistence` — T5 (ε, surviving features, count bounds, the checker);
* :mod:`topoverify.measure.merges` and :mod:`topoverify.measure.merge_tracking` — merged neurons (T6).
"""

from topoverify.checks.persistence import (
    PersistenceStabilityCheck,
    betti_bounds_after,
    check_persistence_stability,
    stability_epsilon,
    surviving_features,
)
from topoverify.measure.betti import DUPLICATE_RTOL, BettiReport, betti_at_scale, betti_report, robust_betti
from topoverify.measure.betti_rules import (
    DEFAULT_LOG_THRESHOLD,
    DEFAULT_MARGIN,
    DEFAULT_MIN_GAP,
    GAP_MIN_BULK,
    MIN_LOOP_LOG_PERSISTENCE,
    RULES,
    FeatureEvidence,
)
from topoverify.measure.diagram_distance import bottleneck, log_bottleneck, log_diagram
from topoverify.measure.merge_tracking import (
    DEFAULT_COLLAPSE_ORDERS,
    DEFAULT_ROUNDOFF_ULPS,
    MergeReport,
    MergeTracker,
    merge_events,
)
from topoverify.measure.merges import count_distinct, merge_clusters, merged_pairs
from topoverify.measure.persistence import (
    AUTO_LANDMARKS,
    EXACT_LIMITS,
    CostWarning,
    PersistenceResult,
    auto_landmarks,
    exact_limit,
    persistence,
)

__all__ = [
    "PersistenceResult",
    "persistence",
    "robust_betti",
    "betti_report",
    "BettiReport",
    "FeatureEvidence",
    "betti_at_scale",
    "betti_bounds_after",
    "exact_limit",
    "auto_landmarks",
    "log_diagram",
    "log_bottleneck",
    "bottleneck",
    "stability_epsilon",
    "surviving_features",
    "check_persistence_stability",
    "PersistenceStabilityCheck",
    "count_distinct",
    "merged_pairs",
    "merge_clusters",
    "MergeTracker",
    "MergeReport",
    "merge_events",
    "CostWarning",
    "DEFAULT_LOG_THRESHOLD",
    "DEFAULT_MIN_GAP",
    "MIN_LOOP_LOG_PERSISTENCE",
    "GAP_MIN_BULK",
    "DEFAULT_MARGIN",
    "DEFAULT_ROUNDOFF_ULPS",
    "DEFAULT_COLLAPSE_ORDERS",
    "DUPLICATE_RTOL",
    "EXACT_LIMITS",
    "AUTO_LANDMARKS",
    "RULES",
]
