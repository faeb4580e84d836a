"""Symbolic (sympy) forms of claim T9: which units of real architectures are permutable, and where T1's
"one field of the unit's own parameters" holds (proofs in ``proofs_notes/T9_architectures.md``).

Every function returns residuals: expressions that are 0 exactly where T9 says its line holds, and that are
*not* 0 (shown by :func:`nonzero_at_a_point`, an exact evaluation at rational points) where it says the line
fails. The encodings are the smallest instances that carry each argument:

* :func:`layernorm_equivariance_residuals` — LN(Px; Pγ, Pβ) = P·LN(x; γ, β) (n = 3); with γ, β not permuted
  it fails; ``coupling=True``: ∂LN_0/∂x_1, which is not 0 (LN couples every dim, through sums: Lemma S).
* :func:`head_permutation_residuals` — multi-head attention (2 heads, head_dim 1, 2 tokens, softmax via exp)
  is invariant when a head's q, k, v rows and o column move together; not when o stays.
* :func:`qk_dim_residuals` — q·k is invariant under a joint permutation of the Q/K dims; with rotary
  embeddings (one frequency per pair of dims) swapping two pairs changes it when the frequencies differ.
* :func:`vo_dim_residuals` — a head's output is additive over its V/O dims and ∂L/∂θ_j = ∇Φ(θ_j) with the
  attention probabilities A (which do not depend on V/O parameters) and δ = ∂L/∂out frozen.
* :func:`qk_logit_field_residuals` — Q/K dims have one field with δ frozen at the attention logits (a sum over
  the dims), whatever follows the logits (an undefined F); :func:`qk_dim_coupling` — with δ frozen at the head's
  *output* instead, the gradient of Q dim 0 has a nonzero derivative in Q dim 1 (the softmax is not additive
  over the dims: the wrong place to freeze); heads do not couple there (``heads=True``: 0).
* :func:`sum_node_field_residuals` — Lemma S (residual streams, LayerNorm): units that interact only through
  sums over the units have one field whose signals are the total derivatives at the sums; freezing a sum as an
  input (T1's single-block form) leaves a nonzero residual.
* :func:`batchnorm_channel_residuals` — train mode: the channel's gradient is ∇Φ(θ_c) with Φ built from its
  own batch statistics, and equal channels get equal gradients; eval mode: equal θ with different running
  statistics get different gradients (no field of θ alone).
* :func:`tied_weight_residuals` — the gradient of a tied parameter is the sum over its uses.

:func:`unit_symmetry_residuals` (the ``sympy`` name of T9) collects them into "holds" and "fails" groups.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import sympy as sp

from topoverify.formatting import ResultMixin

__all__ = [
    "ArchitectureResiduals",
    "layernorm_equivariance_residuals",
    "head_permutation_residuals",
    "qk_dim_residuals",
    "vo_dim_residuals",
    "qk_dim_coupling",
    "qk_logit_field_residuals",
    "sum_node_field_residuals",
    "batchnorm_channel_residuals",
    "tied_weight_residuals",
    "unit_symmetry_residuals",
    "nonzero_at_a_point",
    "is_zero",
]


@functools.cache  # pure and exact: a second call (the registered encoding) costs nothing
def is_zero(expr: sp.Expr) -> bool:
    """Exactly 0: as built, else as one cancelled fraction, else after simplification."""
    return expr == 0 or sp.cancel(sp.together(expr)) == 0 or sp.simplify(expr) == 0


@functools.cache
def nonzero_at_a_point(expr: sp.Expr, seed: int = 0) -> bool:
    """True when ``expr`` is provably not identically 0: its exact value at a rational point (small positive
    rationals, pairwise distinct, fixed by ``seed``) is nonzero (evaluated to 30 digits; a nonzero value that small is
    ruled out by its size)."""
    rng = random.Random(seed)
    symbols = sorted(expr.free_symbols, key=str)
    values = rng.sample(sorted({sp.Rational(p, q) for p in range(1, 14) for q in range(2, 8)}), len(symbols))
    point = dict(zip(symbols, values))
    value = sp.N(expr.xreplace(point), 30)
    return bool(abs(value) > sp.Float("1e-20"))


def _softmax_rows(S: sp.Matrix) -> sp.Matrix:
    E = S.applyfunc(sp.exp)
    return sp.Matrix(S.rows, S.cols, lambda t, s: E[t, s] / sum(E[t, c] for c in range(S.cols)))


# ------------------------------------------------------------------------------------------------ LayerNorm


@functools.cache
def layernorm_equivariance_residuals(n: int = 3, *, permute_affine: bool = True, coupling: bool = False
                                     ) -> tuple[sp.Expr, ...]:
    """LN(Px; Pγ, Pβ) − P·LN(x; γ, β) for the cyclic shift P of n features (0 for every entry). With
    ``permute_affine=False`` γ and β stay: not 0 (the stream is permutable only jointly with LN's gain and
    bias). ``coupling=True`` returns (∂LN_0/∂x_1,): LN's mean and variance make every output depend on every
    input, so T1's single-block form does not apply to residual-stream dims (T9; Lemma S does)."""
    x = sp.symbols(f"x0:{n}", real=True)
    g = sp.symbols(f"gamma0:{n}", real=True)
    b = sp.symbols(f"beta0:{n}", real=True)
    eps = sp.Symbol("epsilon", positive=True)

    def ln(x, g, b):
        mu = sum(x) / n
        var = sum((xi - mu) ** 2 for xi in x) / n
        return [gi * (xi - mu) / sp.sqrt(var + eps) + bi for xi, gi, bi in zip(x, g, b)]

    if coupling:
        return (sp.diff(ln(x, g, b)[0], x[1]),)
    perm = [(i + 1) % n for i in range(n)]
    px = [x[p] for p in perm]
    pg, pb = ([g[p] for p in perm], [b[p] for p in perm]) if permute_affine else (g, b)
    left = ln(px, pg, pb)
    right = [ln(x, g, b)[p] for p in perm]
    return tuple(l - r for l, r in zip(left, right))


# ------------------------------------------------------------------------------------------------ attention


def _mha(X: sp.Matrix, q, k, v, o, scale) -> sp.Matrix:
    """Σ_h softmax(scale·X q_h (X k_h)ᵀ) X v_h o_h: heads enter additively through the output projection."""
    out = sp.zeros(X.rows, o[0].cols)
    for qh, kh, vh, oh in zip(q, k, v, o):
        A = _softmax_rows(scale * (X * qh) * (X * kh).T)
        out += A * X * vh * oh
    return out


@functools.cache
def head_permutation_residuals(*, permute_output: bool = True) -> tuple[sp.Expr, ...]:
    """out(heads swapped) − out for 2 heads of head_dim 1, 2 tokens, d_model 2: 0 when a head's q, k, v rows
    and its o column move together; not 0 with ``permute_output=False`` (the o columns stay)."""
    X = sp.Matrix(2, 2, sp.symbols("x0:4", real=True))
    scale = sp.Symbol("s", positive=True)
    q = [sp.Matrix(2, 1, sp.symbols(f"q{h}_0:2", real=True)) for h in range(2)]
    k = [sp.Matrix(2, 1, sp.symbols(f"k{h}_0:2", real=True)) for h in range(2)]
    v = [sp.Matrix(2, 1, sp.symbols(f"v{h}_0:2", real=True)) for h in range(2)]
    o = [sp.Matrix(1, 2, sp.symbols(f"o{h}_0:2", real=True)) for h in range(2)]
    base = _mha(X, q, k, v, o, scale)
    swapped = _mha(X, q[::-1], k[::-1], v[::-1], o[::-1] if permute_output else o, scale)
    return tuple(swapped - base)


def _rotary_score(q, k, freqs, pos_q, pos_k, rotary: bool) -> sp.Expr:
    """q·k, or with rotary embeddings Σ_p (R(pos_q ω_p) q_p)·(R(pos_k ω_p) k_p) over the pairs p of dims."""
    if not rotary:
        return sum(a * b for a, b in zip(q, k))
    total = sp.Integer(0)
    for p, w in enumerate(freqs):
        def rot(vec, angle):
            c, s = sp.cos(angle), sp.sin(angle)
            return (c * vec[0] - s * vec[1], s * vec[0] + c * vec[1])
        qa, ka = rot(q[2 * p:2 * p + 2], pos_q * w), rot(k[2 * p:2 * p + 2], pos_k * w)
        total += qa[0] * ka[0] + qa[1] * ka[1]
    return total


@functools.cache
def qk_dim_residuals(*, rotary: bool = False, equal_frequencies: bool = False, within_pair: bool = False
                     ) -> tuple[sp.Expr, ...]:
    """score(Pq, Pk) − score(q, k) for head_dim 4 and the permutation swapping the dim pairs (0,1) and (2,3)
    (``within_pair``: swapping dims 0 and 1). Without rotary: 0 for every joint permutation. With rotary
    (pair p rotated by position·ω_p): not 0 when ω_0 ≠ ω_1; 0 for the pair swap when ω_0 = ω_1; within a pair
    the swap reverses the rotation, not 0 even at equal frequencies."""
    q, k = sp.symbols("q0:4", real=True), sp.symbols("k0:4", real=True)
    w0, w1 = sp.symbols("omega0 omega1", positive=True)
    freqs = (w0, w0 if equal_frequencies else w1)
    m, n = sp.symbols("m n", integer=True)
    perm = [1, 0, 2, 3] if within_pair else [2, 3, 0, 1]
    pq, pk = [q[i] for i in perm], [k[i] for i in perm]
    res = _rotary_score(pq, pk, freqs, m, n, rotary) - _rotary_score(q, k, freqs, m, n, rotary)
    return (sp.expand(sp.expand_trig(res)),)


@functools.cache
def vo_dim_residuals() -> tuple[sp.Expr, ...]:
    """For one head (2 tokens, d_model 2, head_dim 2, attention probabilities A frozen: they depend on Q/K
    parameters only) with out = A X V O and the loss L = Σ c·out + ½Σ out²: (i) out − Σ_j (A X v_j) o_jᵀ
    (additivity over V/O dims) and (ii) ∂L/∂θ_j − ∇Φ(θ_j) with θ_j = (v_j, o_j) and
    Φ(z) = Σ_t ⟨δ_t, (A X v(z)) o(z)ᵀ⟩, δ = ∂L/∂out frozen: all 0."""
    A = sp.Matrix(2, 2, sp.symbols("a0:4", real=True))
    X = sp.Matrix(2, 2, sp.symbols("x0:4", real=True))
    V = sp.Matrix(2, 2, sp.symbols("v0:4", real=True))   # column j: dim j's value row (d_model entries)
    O = sp.Matrix(2, 2, sp.symbols("o0:4", real=True))   # row j: dim j's output column
    C = sp.Matrix(2, 2, sp.symbols("c0:4", real=True))
    out = A * X * V * O
    additive = out - sum((A * X * V[:, j] * O[j, :] for j in range(2)), sp.zeros(2, 2))
    loss = sum(C[i] * out[i] + out[i] ** 2 / 2 for i in range(4))
    delta = C + out  # δ = ∂L/∂out, frozen: its θ-dependence is not differentiated below
    zv, zo = sp.Matrix(2, 1, sp.symbols("zv0:2")), sp.Matrix(1, 2, sp.symbols("zo0:2"))
    phi = sum((delta.multiply_elementwise(A * X * zv * zo)))
    z = list(zv) + list(zo)
    residuals = [sp.expand(e) for e in additive]  # polynomial: expansion decides
    for j in range(2):
        theta = list(V[:, j]) + list(O[j, :])
        at = dict(zip(z, theta))
        for zc, tc in zip(z, theta):
            residuals.append(sp.expand(sp.diff(loss, tc) - sp.diff(phi, zc).xreplace(at)))
    return tuple(residuals)


@functools.cache
def qk_dim_coupling(*, heads: bool = False) -> sp.Expr:
    """With δ = ∂L/∂out frozen, G_0 = Σ_t δ_t ∂out_t/∂q_0 (the gradient of Q/K dim 0, 2 tokens with scalar
    inputs x_t, head_dim 2, value/output folded into u): returns ∂G_0/∂q_1, not 0 — with the signal frozen at
    the head's output the dims interact in the softmax, so that is not where T1(b) holds for Q/K dims (it holds
    at the logits: :func:`qk_logit_field_residuals`). ``heads=True``: the same with two one-dim heads,
    ∂G_{head 0}/∂q_{head 1}, which is 0 (heads do not couple at the output)."""
    x = sp.symbols("x0:2", real=True)
    d = sp.symbols("delta0:2", real=True)
    q, k = sp.symbols("q0:2", real=True), sp.symbols("k0:2", real=True)
    u = sp.symbols("u0:2", real=True)

    def head_out(qs, ks, uh):
        S = sp.Matrix(2, 2, lambda t, s: x[t] * x[s] * sum(a * b for a, b in zip(qs, ks)))
        A = _softmax_rows(S)
        return [sum(A[t, s] * x[s] for s in range(2)) * uh for t in range(2)]

    if heads:
        out = [a + b for a, b in zip(head_out(q[:1], k[:1], u[0]), head_out(q[1:], k[1:], u[1]))]
    else:
        out = head_out(q, k, u[0])
    G0 = sum(dt * sp.diff(ot, q[0]) for dt, ot in zip(d, out))
    return sp.diff(G0, q[1])


@functools.cache
def qk_logit_field_residuals() -> tuple[sp.Expr, ...]:
    """Q/K dims have one field when δ is frozen at the attention logits: S = s·Σ_j (X q_j + b_j)(X k_j + c_j)ᵀ
    is a sum over the dims (2 tokens, d_model 2, head_dim 2), and L = F(S) for an *undefined* F (softmax, mask,
    values, output projection, the rest of the network and the loss: anything). Returns ∂L/∂θ_j − ∇Φ(θ_j)
    for θ_j = (q_j, b_j, k_j, c_j) and Φ(z) = Σ_ts δ_ts s (x_t·z_q + z_b)(x_s·z_k + z_c), δ = ∂F/∂S frozen: all 0
    (T1(b) with the logits as the pre-activation and the identity activation: a bilinear field)."""
    X = sp.Matrix(2, 2, sp.symbols("x0:4", real=True))
    scale = sp.Symbol("s", positive=True)
    th = [sp.symbols(f"q{j}_0:2 b{j} k{j}_0:2 c{j}", real=True) for j in range(2)]
    z = sp.symbols("zq0:2 zb zk0:2 zc", real=True)

    def contribution(t):
        q, b, k, c = sp.Matrix(t[:2]), t[2], sp.Matrix(t[3:5]), t[5]
        return scale * (X * q + b * sp.ones(2, 1)) * (X * k + c * sp.ones(2, 1)).T

    S = contribution(th[0]) + contribution(th[1])
    F = sp.Function("F")
    loss = F(*S)
    Ssym = sp.symbols("S0:4", real=True)
    delta = [sp.diff(F(*Ssym), si).subs(dict(zip(Ssym, S)), simultaneous=True) for si in Ssym]
    phi = sum(d * c for d, c in zip(delta, contribution(z)))
    residuals = []
    for t in th:
        at = dict(zip(z, t))
        residuals += [sp.diff(loss, tc) - sp.diff(phi, zc).xreplace(at) for zc, tc in zip(z, t)]
    return tuple(residuals)


@functools.cache
def sum_node_field_residuals(*, with_feedback: bool = True, concrete: bool = False) -> tuple[sp.Expr, ...]:
    """Lemma S of T9 on 3 scalar units: L = F(S1, S2) with the sum nodes S1 = Σ_m c1(θ_m) and
    S2 = Σ_m c2(θ_m, S1) (the second depends on the first, as a LayerNorm's output depends on the mean and
    variance of the stream, which are sums over its dims). Returns ∂L/∂θ_j − Φ'(θ_j) with
    Φ(z) = Λ1 c1(z) + Λ2 c2(z, S1), Λ2 = ∂F/∂S2, Λ1 = ∂F/∂S1 + Λ2 Σ_m ∂_S c2(θ_m, S1) (the total derivatives
    at the sum nodes, frozen): all 0. ``with_feedback=False`` drops the second term of Λ1 (freezing S1 as if it
    were an input, T1's single-block form): not 0. F, c1, c2 undefined, or with ``concrete`` F = S1·exp(S2),
    c1 = sin, c2(z, S) = z²·S (to evaluate at a point)."""
    theta = sp.symbols("theta0:3", real=True)
    z, S1s, S2s = sp.symbols("z S1 S2", real=True)
    if concrete:
        F = sp.Lambda((S1s, S2s), S1s * sp.exp(S2s))
        c1, c2 = sp.Lambda(z, sp.sin(z)), sp.Lambda((z, S1s), z ** 2 * S1s)
    else:
        F, c1, c2 = sp.Function("F"), sp.Function("c1"), sp.Function("c2")
    S1 = sum(c1(t) for t in theta)
    S2 = sum(c2(t, S1) for t in theta)
    loss = F(S1, S2)
    at_nodes = {S1s: S1, S2s: S2}
    lam2 = sp.diff(F(S1s, S2s), S2s).subs(at_nodes, simultaneous=True)
    lam1 = sp.diff(F(S1s, S2s), S1s).subs(at_nodes, simultaneous=True)
    if with_feedback:
        lam1 += lam2 * sum(sp.diff(c2(t, S1s), S1s).subs(S1s, S1) for t in theta)
    phi = lam1 * c1(z) + lam2 * c2(z, S1)
    return tuple(sp.diff(loss, t) - sp.diff(phi, z).subs(z, t) for t in theta)


# ------------------------------------------------------------------------------------------------ BatchNorm


@functools.cache
def batchnorm_channel_residuals(*, training: bool = True, batch: int = 2) -> tuple[sp.Expr, ...]:
    """Two channels of Linear(1→2) → BatchNorm → σ(u) = u + u²/2 → Linear(2→1), ``batch`` samples, loss
    ½Σ out².

    ``training=True``: ∂L/∂θ_c − ∇Φ(θ_c) for θ_c = (w_c, b_c, γ_c, β_c, a_c) and
    Φ(z) = Σ_n δ_n a σ(γ (w x_n + b − μ_B)/√(var_B + ε) + β), μ_B, var_B the batch statistics of z's own
    channel, δ = ∂L/∂out frozen (all 0); then the gradients of two channels set equal, which are equal
    (0). ``training=False`` (running statistics m_c, v_c): the gradients of two channels with equal θ and
    different running statistics; not 0, so no field of θ alone gives both."""
    x = sp.symbols(f"x0:{batch}", real=True)
    eps = sp.Symbol("epsilon", positive=True)
    th = [sp.symbols(f"w{c} b{c} gamma{c} beta{c} a{c}", real=True) for c in range(2)]
    run = [sp.symbols(f"m{c} v{c}", positive=True) for c in range(2)]

    def contribution(t, stats=None):
        w, b, g, be, a = t
        z = [w * xn + b for xn in x]
        if stats is None:
            mu = sum(z) / batch
            var = sum((zn - mu) ** 2 for zn in z) / batch
        else:
            mu, var = stats
        y = [g * (zn - mu) / sp.sqrt(var + eps) + be for zn in z]
        return [a * (yn + yn ** 2 / 2) for yn in y]

    stats = [None, None] if training else run
    out = [c0 + c1 for c0, c1 in zip(contribution(th[0], stats[0]), contribution(th[1], stats[1]))]
    loss = sum(o ** 2 for o in out) / 2
    if not training:
        equal = dict(zip(th[1], th[0]))
        return tuple((sp.diff(loss, p0) - sp.diff(loss, p1)).xreplace(equal) for p0, p1 in zip(*th))
    z = sp.symbols("z0:5", real=True)
    delta = out  # ∂L/∂out_n = out_n, frozen as expressions in θ (the field's z is a separate symbol)
    phi = sum(dn * cn for dn, cn in zip(delta, contribution(z)))
    residuals = []
    for t in th:
        at = dict(zip(z, t))
        residuals += [sp.diff(loss, tc) - sp.diff(phi, zc).xreplace(at) for zc, tc in zip(z, t)]
    equal = dict(zip(th[1], th[0]))
    residuals += [(sp.diff(loss, p0) - sp.diff(loss, p1)).xreplace(equal) for p0, p1 in zip(*th)]
    return tuple(residuals)


# ------------------------------------------------------------------------------------------------ tied weights


@functools.cache
def tied_weight_residuals(*, count_both_uses: bool = True, concrete: bool = False) -> tuple[sp.Expr, ...]:
    """A weight w ∈ ℝ² used twice (embedding lookup and output projection, as GPT-2's wte = lm_head):
    L(w) = f(w·x) + g(w·y). Returns ∂L/∂w − (∂L/∂w₁ + ∂L/∂w₂)|_{w₁ = w₂ = w} (0: one parameter, its gradient
    the sum over its uses); with ``count_both_uses=False`` only the first use's term is subtracted, leaving
    the second use's term (not 0). f, g are undefined functions, or with ``concrete`` f = sin, g = exp (to
    evaluate the residual at a point)."""
    w, w1, w2 = (sp.symbols(f"{n}0:2", real=True) for n in ("w", "wa", "wb"))
    x, y = sp.symbols("x0:2", real=True), sp.symbols("y0:2", real=True)
    f, g = (sp.sin, sp.exp) if concrete else (sp.Function("f"), sp.Function("g"))

    def dot(a, b):
        return sum(ai * bi for ai, bi in zip(a, b))

    tied = f(dot(w, x)) + g(dot(w, y))
    untied = f(dot(w1, x)) + g(dot(w2, y))
    at = {**dict(zip(w1, w)), **dict(zip(w2, w))}
    return tuple(sp.simplify(sp.diff(tied, wi) - (sp.diff(untied, ai) + (sp.diff(untied, bi) if count_both_uses
                                                                         else 0)).subs(at))
                 for wi, ai, bi in zip(w, w1, w2))


# ------------------------------------------------------------------------------------------------ all of T9


@dataclass(frozen=True)
class ArchitectureResiduals(ResultMixin):
    """T9's encodings: ``holds`` (name → residuals, all 0 where the claim says its line holds) and ``fails``
    (name → residuals, some not 0 where it says the line fails)."""

    holds: dict
    fails: dict

    def __str__(self) -> str:
        lines = ["T9 encodings (0 where T9 holds, nonzero where it fails):"]
        lines += [f"  holds  {k}: {len(v)} residuals" for k, v in self.holds.items()]
        lines += [f"  fails  {k}: {len(v)} residuals" for k, v in self.fails.items()]
        return "\n".join(lines)


def unit_symmetry_residuals() -> ArchitectureResiduals:
    """Every encoding of T9 (a few seconds in all)."""
    holds = {
        "layernorm equivariance (gain and bias permuted)": layernorm_equivariance_residuals(),
        "attention head permutation": head_permutation_residuals(),
        "joint Q/K dim permutation, no rotary": qk_dim_residuals(),
        "rotary pair swap, equal frequencies": qk_dim_residuals(rotary=True, equal_frequencies=True),
        "V/O dims: additive, one field": vo_dim_residuals(),
        "heads do not couple (delta frozen)": (qk_dim_coupling(heads=True),),
        "Q/K dims: one field with delta frozen at the logits": qk_logit_field_residuals(),
        "sum nodes (residual stream, LayerNorm): one field with total derivatives": sum_node_field_residuals(),
        "BatchNorm train mode: one field, equal channels stay equal": batchnorm_channel_residuals(),
        "tied weight: gradient is the sum over uses": tied_weight_residuals(),
    }
    fails = {
        "layernorm without permuting gain and bias": layernorm_equivariance_residuals(permute_affine=False),
        "layernorm couples the stream's dims": layernorm_equivariance_residuals(coupling=True),
        "attention heads with the output projection not permuted": head_permutation_residuals(permute_output=False),
        "rotary pair swap, distinct frequencies": qk_dim_residuals(rotary=True),
        "rotary swap within a pair": qk_dim_residuals(rotary=True, equal_frequencies=True, within_pair=True),
        "Q/K dims with delta frozen at the head output (softmax not additive)": (qk_dim_coupling(),),
        "sum nodes frozen as inputs (T1's single-block form)": sum_node_field_residuals(with_feedback=False,
                                                                                          concrete=True),
        "BatchNorm eval mode: running statistics": batchnorm_channel_residuals(training=False),
        "tied weight counted once": tied_weight_residuals(count_both_uses=False, concrete=True),
    }
    return ArchitectureResiduals(holds=holds, fails=fails)
