"""Top Hessian eigenvalues of the loss from Hessian-vector products (double backward): power iteration for
‖H‖, Lanczos for λ_max(H) and Adam's preconditioned sharpness λ_max(P⁻¹H) (claim T8, ``spec/claims.toml``).

λ_max of the full Hessian, and of the Hessian restricted to one neuron layer's parameters (a principal
submatrix, so ‖H_layer‖ ≤ ‖H‖ by Cauchy interlacing), bound the Lipschitz constant of the whole gradient map,
which includes the collective modes that move all neurons together and change no pairwise distance; the field
constant K of T1–T3 is typically far smaller (``proofs_notes/T8_edge_of_stability.md``). λ_max against 2/lr
(and λ_max(P⁻¹H) against Adam's own edge, :mod:`topoverify.symbolic.stability`) is T8's edge of stability.

Everything here is an *estimate*: a Lanczos Ritz value θ ≤ λ_max (up to round-off), with the residual
‖Hy − θy‖ of its unit Ritz vector y reported — some eigenvalue of H lies within the residual of θ.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from topoverify.errors import NonFiniteError
from topoverify.formatting import NOT_SERIALIZED, ResultMixin, fmt

__all__ = ["HessianEstimate", "top_hessian_eigenvalue", "HessianOperator", "SharpnessEstimate",
           "hessian_lambda_max", "AdamPreconditioner", "adam_preconditioner", "preconditioned_sharpness"]


@dataclass(frozen=True)
class HessianEstimate(ResultMixin):
    """Largest-magnitude Hessian eigenvalue found by power iteration (a lower bound on ‖H‖_op)."""

    norm: float          # ‖Hv‖ for the final unit v: a lower bound on the spectral norm
    eigenvalue: float    # Rayleigh quotient vᵀHv (signed; ≈ ±norm at convergence)
    iterations: int
    converged: bool
    params: tuple[str, ...]

    def __str__(self) -> str:
        return (f"|λ|max ≈ {fmt(self.norm)} (Rayleigh {fmt(self.eigenvalue)}, {self.iterations} iterations"
                f"{'' if self.converged else ', not converged'}) over {len(self.params)} parameter tensors")


def twice_differentiable():
    """A context in which scaled dot-product attention uses its math kernel: the fused CPU kernels (flash,
    memory-efficient) have no second derivative, and a Hessian-vector product needs one (transformer models)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: no kernel choice on CPU, whose default there is the math kernel
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


class HessianOperator:
    """v ↦ Hv for the Hessian of ``loss_fn(model, batch)`` w.r.t. ``params`` (all if None), on flat vectors.

    The loss runs once, with a retained double-backward graph, on a private deep copy of the model (a forward
    pass with side effects, such as a call counter or BatchNorm statistics, touches only the copy)."""

    @torch.enable_grad()
    def __init__(self, model: nn.Module, loss_fn: Callable, batch, params: Sequence[str] | None = None):
        private = copy.deepcopy(model)
        named = dict(private.named_parameters())
        self.names = tuple(named) if params is None else tuple(params)
        missing = [n for n in self.names if n not in named]
        if missing:
            raise KeyError(f"no parameters {missing} in the model")
        for n, p in named.items():
            p.requires_grad_(n in self.names)
        self.primal = [named[n] for n in self.names]
        with twice_differentiable():
            loss = loss_fn(private, batch)
            grads = torch.autograd.grad(loss, self.primal, create_graph=True, allow_unused=True)
        self._grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.primal)]
        self._diff = [g.requires_grad for g in self._grads]
        self.size = sum(p.numel() for p in self.primal)
        self.dtype = self.primal[0].dtype if self.primal else torch.float64

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        out, k = [], 0
        for p in self.primal:
            out.append(flat[k:k + p.numel()].reshape(p.shape))
            k += p.numel()
        return out

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0, dtype=self.dtype)

    def hvp_list(self, v: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = [g for g, d in zip(self._grads, self._diff) if d]
        if not outs:
            return [torch.zeros_like(p) for p in self.primal]
        vs = [t for t, d in zip(v, self._diff) if d]
        hv = torch.autograd.grad(outs, self.primal, grad_outputs=vs, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if h is None else h.detach() for h, p in zip(hv, self.primal)]

    def matvec(self, flat: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.hvp_list(self.split(flat.to(self.dtype))))


def top_hessian_eigenvalue(model: nn.Module, loss_fn: Callable, batch, params: Sequence[str] | None = None,
                           iters: int = 50, tol: float = 1e-4, seed: int = 0) -> HessianEstimate:
    """Power iteration v ← Hv/‖Hv‖ with H the Hessian of ``loss_fn`` w.r.t. ``params`` (all if None)
    (see :class:`HessianOperator`); stops when ‖Hv‖ changes by ≤ ``tol`` relative."""
    op = HessianOperator(model, loss_fn, batch, params)
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in op.primal]
    total = torch.sqrt(sum((t * t).sum() for t in v))
    v = [t / total for t in v]
    norm, rayleigh, it, converged = 0.0, 0.0, 0, False
    for it in range(1, iters + 1):
        hv = op.hvp_list(v)
        new_norm = float(torch.sqrt(sum((t * t).sum() for t in hv)))
        rayleigh = float(sum((a * b).sum() for a, b in zip(v, hv)))
        converged = abs(new_norm - norm) <= tol * max(new_norm, 1e-300)
        norm = max(norm, new_norm)
        if new_norm == 0.0:
            converged = True
            break
        v = [t / new_norm for t in hv]
        if converged:
            break
    return HessianEstimate(norm, rayleigh, it, converged, op.names)


@dataclass(frozen=True)
class SharpnessEstimate(ResultMixin):
    """λ_max of a symmetric operator (H, or P^{-1/2}HP^{-1/2}) by Lanczos: an *estimate* (a Ritz value, a
    lower bound on λ_max up to round-off). ``residual`` = ‖Ay − θy‖ for the unit Ritz vector y (some eigenvalue
    of A lies within it of θ); ``converged``: residual ≤ ``tol``·|θ| within ``iterations`` ≤ the budget.
    ``vector`` (not serialized) is y, to warm-start the next estimate."""

    eigenvalue: float
    residual: float
    iterations: int
    budget: int
    tol: float
    converged: bool
    params: tuple[str, ...]
    preconditioned: bool = False
    vector: torch.Tensor | None = field(default=None, metadata=NOT_SERIALIZED, repr=False, compare=False)

    @property
    def relative_residual(self) -> float:
        return self.residual / abs(self.eigenvalue) if self.eigenvalue else math.inf

    def __str__(self) -> str:
        what = "λmax(P⁻¹H)" if self.preconditioned else "λmax(H)"
        return (f"{what} ≈ {fmt(self.eigenvalue)} (estimate; residual {fmt(self.residual, 3)}, {self.iterations}/"
                f"{self.budget} Lanczos steps, {'converged' if self.converged else 'NOT converged'} at tol "
                f"{fmt(self.tol, 3)})")


def _lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, iters: int, tol: float):
    """Lanczos with full reorthogonalisation from v0 (≠ 0): (θ_max, residual, steps, converged, Ritz vector)."""
    Q = [v0 / torch.linalg.vector_norm(v0)]
    alphas: list[float] = []
    betas: list[float] = []
    n = v0.numel()
    theta, resid, y_coef, converged = 0.0, math.inf, None, False
    for j in range(min(iters, n)):
        w = matvec(Q[-1])
        alphas.append(float(torch.dot(w, Q[-1])))
        basis = torch.stack(Q)
        for _ in range(2):  # classical Gram–Schmidt twice against the whole basis
            w = w - basis.T @ (basis @ w)
        beta = float(torch.linalg.vector_norm(w))
        T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            T = T + torch.diag(off, 1) + torch.diag(off, -1)
        evals, evecs = torch.linalg.eigh(T)
        theta, y_coef = float(evals[-1]), evecs[:, -1]
        resid = beta * abs(float(y_coef[-1]))
        converged = resid <= tol * max(abs(theta), 1e-300) or beta <= 1e-12 * max(abs(theta), 1e-300)
        if converged or j + 1 == min(iters, n):
            break
        betas.append(beta)
        Q.append(w / beta)
    y = (torch.stack(Q).T @ y_coef.to(Q[0].dtype)) if y_coef is not None else Q[0]
    return theta, resid, len(alphas), converged, y


def _start(op: HessianOperator, v0: torch.Tensor | None, seed: int, mix: float = 1e-2) -> torch.Tensor:
    """A warm start v0 with a small random part (so the Krylov space never sits in an invariant subspace)."""
    gen = torch.Generator().manual_seed(seed)
    rnd = torch.randn(op.size, generator=gen, dtype=torch.float64).to(op.dtype)
    if v0 is None or v0.numel() != op.size or not bool(torch.isfinite(v0).all()) or not bool(v0.any()):
        return rnd
    v0 = v0.detach().to(op.dtype).reshape(-1)
    return v0 / torch.linalg.vector_norm(v0) + mix * rnd / torch.linalg.vector_norm(rnd)


def hessian_lambda_max(model: nn.Module, loss_fn: Callable, batch, params: Sequence[str] | None = None, *,
                       iters: int = 20, tol: float = 1e-3, v0: torch.Tensor | None = None, seed: int = 0,
                       operator: HessianOperator | None = None) -> SharpnessEstimate:
    """T8: λ_max of the loss Hessian (largest *algebraic* eigenvalue) by at most ``iters`` Lanczos steps,
    warm-started from ``v0`` (e.g. the previous estimate's ``vector``); ``operator`` reuses a built one."""
    op = HessianOperator(model, loss_fn, batch, params) if operator is None else operator
    theta, resid, it, conv, y = _lanczos(op.matvec, _start(op, v0, seed), iters, tol)
    return SharpnessEstimate(theta, resid, it, iters, tol, conv, op.names, False, y)


@dataclass(frozen=True)
class AdamPreconditioner(ResultMixin):
    """Adam's pre-step diagonal P = √v̂ + ε, v̂ = v/(1 − β₂^t) (v = max_exp_avg_sq with amsgrad), per parameter
    name; names the optimizer does not update (no state) are absent. ``lr``, ``beta1`` shared by all groups."""

    diag: dict[str, torch.Tensor] = field(metadata=NOT_SERIALIZED, repr=False)
    lr: float
    beta1: float
    maximize: bool


def adam_preconditioner(model: nn.Module, optimizer: torch.optim.Optimizer) -> AdamPreconditioner | str:
    """Read P from a torch.optim.Adam/AdamW's state (read-only), or say why there is none (a str).

    Before the first step there is none: v̂ = v/(1 − β₂^t) is 0/0 at t = 0 (not 0), and Adam's first step is
    sign-like (T7), not a step with a frozen preconditioner. Groups that differ in lr, β₁ or maximize have no
    single edge (None with that reason). A non-finite state tensor → NonFiniteError naming it."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return f"no preconditioned sharpness for {type(optimizer).__name__} (Adam and AdamW only)"
    names = {id(p): n for n, p in model.named_parameters()}
    diag: dict[str, torch.Tensor] = {}
    hyper = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            if "exp_avg_sq" not in st or id(p) not in names:
                continue
            key = "max_exp_avg_sq" if group.get("amsgrad", False) else "exp_avg_sq"
            v, t = st[key].detach(), float(st["step"])
            if not bool(torch.isfinite(v).all()):
                raise NonFiniteError(f"optimizer state {key} of {names[id(p)]} has NaN/Inf entries; the run has "
                                     f"diverged, there is no preconditioner to read")
            beta2, eps = float(group["betas"][1]), float(group["eps"])
            diag[names[id(p)]] = torch.sqrt(v / (1 - beta2 ** t)) + eps
            hyper.add((float(group["lr"]), float(group["betas"][0]), bool(group.get("maximize", False))))
    if not diag:
        return ("no Adam step taken yet: v_hat = v/(1 - beta2^t) is 0/0 at t = 0, and the first step is "
                "sign-like, so there is no frozen preconditioner")
    if len(hyper) > 1:
        return f"param groups differ in (lr, beta1, maximize) {sorted(hyper)}: no single edge of stability"
    lr, beta1, maximize = hyper.pop()
    return AdamPreconditioner(diag, lr, beta1, maximize)


def preconditioned_sharpness(model: nn.Module, loss_fn: Callable, batch, optimizer: torch.optim.Optimizer, *,
                             iters: int = 20, tol: float = 1e-3, v0: torch.Tensor | None = None, seed: int = 0,
                             operator: HessianOperator | None = None) -> SharpnessEstimate | None:
    """T8 for Adam: λ_max(P⁻¹H), P = diag(√v̂ + ε) from :func:`adam_preconditioner`, as the top eigenvalue of
    the symmetric P^{-1/2}HP^{-1/2} (same spectrum) over the parameters Adam updates (H of −loss with
    ``maximize``); weight decay is not in H. None where :func:`adam_preconditioner` gives a reason."""
    pre = adam_preconditioner(model, optimizer)
    if isinstance(pre, str):
        return None
    op = HessianOperator(model, loss_fn, batch) if operator is None else operator
    d = op.flatten([pre.diag[n].to(p.dtype).rsqrt() if n in pre.diag else torch.zeros_like(p)
                    for n, p in zip(op.names, op.primal)])
    sign = -1.0 if pre.maximize else 1.0
    start = _start(op, v0, seed) * (d != 0)  # stays in the span of the updated coordinates
    theta, resid, it, conv, y = _lanczos(lambda x: sign * d * op.matvec(d * x), start, iters, tol)
    return SharpnessEstimate(theta, resid, it, iters, tol, conv, tuple(n for n in op.names if n in pre.diag), True, y)
