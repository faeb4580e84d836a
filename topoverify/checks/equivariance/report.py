"""Result dataclasses of the equivariance checker: a mismatch, a counterexample, the coverage, the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from topoverify.formatting import ResultMixin, fmt

VERDICTS = ("equivariant", "not_equivariant", "stochastic", "inconclusive", "error")
MIN_COMPARED_FRACTION = 0.5  # an "equivariant" verdict needs at least this fraction of examples compared


@dataclass(frozen=True)
class Mismatch(ResultMixin):
    """One tensor of the permuted run that does not equal the permuted tensor of the original run.

    ``key`` names it: ``"param 0.weight"`` or ``"state 0.weight/exp_avg"`` (``"state <key>"`` for state that
    belongs to no parameter). ``observed``/``allowed`` are relative errors (max |B − P·A| over the tensor's
    scale); ``observed_abs``/``allowed_abs`` the absolute ones. ``neurons`` are the neuron indices (in the
    permuted model) whose blocks deviate; ``original_neurons`` the same neurons' indices in the original model.
    """

    step: int
    key: str
    kind: str
    observed: float
    allowed: float
    observed_abs: float
    allowed_abs: float
    neurons: tuple[int, ...] = ()
    original_neurons: tuple[int, ...] = ()
    detail: str = ""

    def __str__(self) -> str:
        neu = (f"; neurons {list(self.neurons)} of the permuted model (= {list(self.original_neurons)} of the "
               f"original)" if self.neurons else "")
        extra = f"; {self.detail}" if self.detail else ""
        return (f"step {self.step}, {self.key}: relative error {fmt(self.observed, 3)} > allowed "
                f"{fmt(self.allowed, 3)} (absolute {fmt(self.observed_abs, 3)} vs {fmt(self.allowed_abs, 3)})"
                f"{neu}{extra}")


@dataclass(frozen=True)
class Counterexample(ResultMixin):
    """A (shrunk) failing example: run the optimizer on ``architecture`` and on its copy with layer
    ``layer``'s neurons permuted by ``permutation`` (permuted neuron k = original neuron permutation[k]);
    after ``step`` steps the tensor ``key`` of the permuted run differs from the permuted tensor of the
    original run by ``observed`` (relative) where ``allowed`` is tolerated."""

    architecture: str
    arch: dict[str, Any]
    layer: str
    layer_index: int
    width: int
    permutation: tuple[int, ...]
    step: int
    key: str
    kind: str
    neurons: tuple[int, ...]
    original_neurons: tuple[int, ...]
    observed: float
    allowed: float
    observed_abs: float
    allowed_abs: float
    param_groups: str = "one"
    duplicate: bool = False
    batch: int = 4
    init_seed: int = 0
    data_seed: int = 0
    dtype: str = "float64"
    detail: str = ""
    # when ``key`` is optimizer state: did the parameter trajectories of the same permuted run depart too?
    # (``None`` when ``key`` is a parameter); ``parameter_step``/``parameter_key`` say where they did,
    # ``parameter_steps_matched`` how many steps they followed the permutation
    parameters_differ: bool | None = None
    parameter_step: int | None = None
    parameter_key: str = ""
    parameter_steps_matched: int = 0

    def parameters_text(self) -> str:
        """One sentence on the parameter trajectories when the counterexample is on optimizer state."""
        if self.parameters_differ is None:
            return ""
        if self.parameters_differ:
            return (f"the parameter trajectories depart as well: {self.parameter_key} at step "
                    f"{self.parameter_step}.")
        return (f"the parameter trajectories followed the permutation over the {self.parameter_steps_matched} "
                f"step(s) compared: the departure is in the optimizer state only.")

    def __str__(self) -> str:
        lines = [
            f"architecture: {self.architecture}",
            f"layer: {self.layer!r} (index {self.layer_index}, {self.width} neurons)",
            f"permutation: {list(self.permutation)} (permuted neuron k = original neuron perm[k])",
            f"first failing step: {self.step}",
            f"tensor: {self.key}",
            f"neurons involved: {list(self.neurons) or 'not a neuron tensor'}"
            + (f" (original indices {list(self.original_neurons)})" if self.neurons else ""),
            f"observed relative error {fmt(self.observed, 3)} vs allowed {fmt(self.allowed, 3)} "
            f"(absolute {fmt(self.observed_abs, 3)} vs {fmt(self.allowed_abs, 3)})",
        ]
        setup = [f"param groups={self.param_groups}", f"batch={self.batch}", f"init_seed={self.init_seed}",
                 f"data_seed={self.data_seed}", f"dtype={self.dtype}"]
        if self.duplicate:
            setup.append("neuron 1 starts as a copy of neuron 0")
        lines.append("setup: " + ", ".join(setup))
        if self.parameters_differ is not None:
            lines.append(f"parameters: {self.parameters_text()}")
        if self.detail:
            lines.append(f"detail: {self.detail}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Coverage(ResultMixin):
    """What a verdict of :func:`~topoverify.equivariance_error` rests on.

    ``examples`` generated (shrinking reruns not counted); ``compared``: completed and compared at one step
    at least (a failing example counts); ``errored``: the rule raised, diverged, or the example could not be
    built; ``uncompared``: completed, but the rule amplifies round-off beyond the tolerance from step 1.
    ``by_dtype``: compared examples per parameter dtype, of the ``dtypes`` searched. ``large``: compared
    examples with a parameter tensor of more than ``large_tensor`` entries; ``largest_tensor``: the largest
    such tensor compared. ``state_not_compared``: optimizer-state entries (by name) whose action under the
    permutation is not known from their shape, with the reason; on those examples the verdict rests on the
    parameters and the other state. ``by_family``: compared examples per architecture family. An
    ``equivariant`` verdict needs ``fraction >= min_fraction``."""

    examples: int = 0
    compared: int = 0
    errored: int = 0
    uncompared: int = 0
    by_dtype: dict[str, int] = field(default_factory=dict)
    dtypes: tuple[str, ...] = ()
    large: int = 0
    large_tensor: int = 256
    largest_tensor: int = 0
    state_not_compared: dict[str, str] = field(default_factory=dict)
    min_fraction: float = 0.5
    by_family: dict[str, int] = field(default_factory=dict)  # compared examples per architecture family

    @property
    def fraction(self) -> float:
        return self.compared / self.examples if self.examples else 0.0

    def dtype_text(self) -> str:
        return ", ".join(f"{d} {self.by_dtype.get(d, 0)}" for d in self.dtypes)

    def __str__(self) -> str:
        parts = [f"{self.compared} of {self.examples} examples compared ({100 * self.fraction:.0f}%"
                 + (f"; {self.errored} errored" if self.errored else "")
                 + (f"; {self.uncompared} not comparable at any step" if self.uncompared else "") + ")",
                 f"by dtype: {self.dtype_text()}",
                 f"{self.large} with a parameter tensor above {self.large_tensor} entries (largest compared: "
                 f"{self.largest_tensor})"]
        if self.by_family:
            parts.append("by family: " + ", ".join(f"{k} {v}" for k, v in sorted(self.by_family.items())))
        if self.state_not_compared:
            parts.append("state not compared: " + "; ".join(f"{k} ({v})" for k, v in
                                                            sorted(self.state_not_compared.items())))
        return "; ".join(parts)


@dataclass(frozen=True)
class EquivarianceReport(ResultMixin):
    """Verdict of :func:`topoverify.equivariance_error` on one learning rule.

    ``verdict``: ``"equivariant"``, ``"not_equivariant"`` (see ``counterexample``), ``"stochastic"`` (the rule
    draws its own randomness and fails under shared seeds: equivariant at most in distribution),
    ``"inconclusive"`` (parameters never moved, too few examples could be compared - see ``coverage`` - or
    the search was interrupted) or ``"error"`` (the optimizer cannot be built or stepped, or an example ran
    past the time limit; see ``message``).
    """

    verdict: str
    optimizer: str
    message: str
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    counterexample: Counterexample | None = None
    examples_run: int = 0
    examples_errored: int = 0
    examples_moved: int = 0
    shrink_runs: int = 0
    permutations_checked: int = 0
    steps: int = 0
    dtype: str = "float64"
    compute_dtype: str = "float64"
    rtol: float = 0.0
    max_relative_error: float = 0.0
    uses_randomness: bool = False
    notes: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    seed: int = 0
    elapsed_s: float = 0.0
    coverage: Coverage | None = None
    dtypes: tuple[str, ...] = ()
    rtols: dict[str, float] = field(default_factory=dict)
    timeout_s: float | None = None
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return self.verdict == "equivariant"

    def __str__(self) -> str:
        head = f"{self.optimizer}: {self.verdict.upper().replace('_', ' ')}"
        lines = [head, f"  {self.message}"]
        lines.append(f"  {self.examples_run} examples ({self.examples_errored} errored, {self.examples_moved} "
                     f"moved the parameters), {self.permutations_checked} permuted runs of {self.steps} steps, "
                     f"{'/'.join(self.dtypes) or self.dtype} ({self.dtype} computes in {self.compute_dtype}), "
                     f"rtol {', '.join(f'{fmt(v, 2)} ({k})' for k, v in self.rtols.items()) or fmt(self.rtol, 2)}, "
                     f"largest passing relative error in {self.dtype} {fmt(self.max_relative_error, 3)}, "
                     f"{self.elapsed_s:.2f} s, seed {self.seed}")
        if self.coverage is not None:
            lines.append(f"  coverage: {self.coverage}")
        if self.interrupted:
            lines.append("  interrupted (Ctrl-C): a partial verdict on the examples run so far")
        if self.counterexample is not None:
            lines.append("  counterexample:")
            lines += ["    " + line for line in str(self.counterexample).splitlines()]
        for note in self.notes:
            lines.append(f"  note: {note}")
        for err in self.errors[:5]:
            lines.append(f"  example error: {err}")
        return "\n".join(lines)


__all__ = ["VERDICTS", "MIN_COMPARED_FRACTION", "Mismatch", "Counterexample", "Coverage", "EquivarianceReport"]
