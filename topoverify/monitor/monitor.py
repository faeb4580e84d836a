"""``TopologyMonitor``: lr·K of every layer at every step of a plain PyTorch training loop (claims T2, T3,
T7; proofs_notes/T7_monitor_bound.md).

Attached once, ``mon = TopologyMonitor(model, optimizer)``, it needs no extra forward or backward pass:
module hooks keep each layer's input h and back-propagated signal δ from the user's own passes
(:mod:`topoverify.monitor.capture`), and an optimizer step pre-hook, before the parameters move, builds the
update field's samples from them (:func:`topoverify.measure.field.samples_from_captures`) and, per layer:

1. checks that the gradient the optimizer will use is that field (:func:`topoverify.monitor.bound.check_field`;
   a common scale s ≤ 1 from clipping scales K, anything else: the step is not covered);
2. for torch.optim.SGD, the per-step *certified* bound lr·K_eff_upper = lr(|c_g| K_G + |c_b| ρ_b) with K_G
   from the certified hull bound and ρ_b by the recursion of :mod:`topoverify.monitor.bound` (equal to
   predict_step's certified lr·K_eff_upper for plain SGD);
3. when that bound reaches ``threshold`` (or every ``full_every`` steps), the full evaluation: what
   :func:`topoverify.predict_step` gives for the layer (:func:`topoverify.checks.step_prediction.predict_layer`,
   one code path), with the K estimate by power iteration;
4. for the adaptive families (Adam, RMSprop, ...): no cheap bound (their K_eff has all-pairs state ratios,
   and L_g ~ 1/ε makes a multiplicative bound vacuous), the full evaluation every ``full_every`` steps
   (default :data:`ADAPTIVE_FULL_EVERY`). An optimizer without any rule: a warning at attach, and every
   step recorded as "unknown" with the reason (friendlier than refusing to train).

Topology (Betti numbers with their range, distinct count, max log-persistence) every ``topology_every``
steps and at :meth:`close`. Records: :mod:`topoverify.monitor.history`.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from topoverify.checks.step_prediction import BREAKDOWN_POSSIBLE, PRESERVING, predict_layer, require_full_precision
from topoverify.errors import LayoutError, TopoverifyError, UnsupportedError
from topoverify.experiments.snapshots import topology_snapshot
from topoverify.formatting import fmt
from topoverify.measure.field import BlockSamples, samples_from_captures
from topoverify.measure.pairs import max_pair_ratio
from topoverify.monitor import bound as _bound
from topoverify.monitor.capture import LayerCapture
from topoverify.monitor.history import MonitorHistory
from topoverify.neurons.layouts import NeuronLayer, neuron_cloud, resolve_layers
from topoverify.rules import rule_for
from topoverify.rules.sgd import SGD_RULE
from topoverify.symbolic import momentum_K_eff_numeric

ADAPTIVE_FULL_EVERY = 50   # default full-evaluation interval where no per-step bound exists
UNKNOWN = "unknown"


class TopologyBreakdownWarning(UserWarning):
    """A layer's phase turned breakdown-possible (estimate lr·K_eff ≥ 1): its topology may change."""


class _Layer:
    """Per-layer state: the hooks, the neurons whose gradient is checked, the momentum recursion, caches."""

    def __init__(self, model: nn.Module, layer: NeuronLayer, seed: int):
        self.layer, self.name = layer, layer.name
        self.capture = LayerCapture(model, layer) if layer.kind in ("linear", "conv2d") else None
        gen = torch.Generator().manual_seed(seed)
        self.check_idx = torch.randperm(layer.size, generator=gen)[:_bound.GRADIENT_CHECK_NEURONS]
        self.track = _bound.MomentumTrack()
        self.warned = False
        self.params = _bound.member_params(model, layer)
        # the producer's members (weight, bias) lead the cloud layout: they are w̃, the rest a
        self.n_w = sum(1 for m in layer.members if layer.producer is not None
                       and m.name.rsplit(".", 1)[0] == layer.producer)
        self.tier: int | None = None        # the tier that bounded the current step (0, 1, 2; None: none)
        self.map_key: tuple | None = None   # the param groups' hyper-parameters the cached step map was read at
        self.step_map = None


class TopologyMonitor:
    """Watch lr·K of every neuron layer at every step of ``model`` trained by ``optimizer`` (module docstring).

    ``layers``: as for predict_step (default: detected); ``threshold`` in (0, 1]: the per-step bound at or above
    which the full evaluation runs; ``full_every``: also evaluate every that many steps (default: never for
    SGD with a finite bound, :data:`ADAPTIVE_FULL_EVERY` where no per-step bound exists); ``topology_every``:
    steps between topology snapshots (None: only at close); ``maxdim``/``n_perm``: for the snapshots (default: 256
    greedy landmarks, ~0.2 s for 1024 neurons in R^74 where exact persistence takes ~2 s; the subsampling's
    uncertainty widens the Betti ranges, never hidden; ``n_perm=None`` for exact persistence);
    ``neighbors``/``power_iters``/``seed``: for the K estimate (each evaluated layer uses a fresh generator
    seeded with ``seed``, so its estimate equals ``predict_step(..., layers=[layer], seed=seed)``);
    ``warn``: issue :class:`TopologyBreakdownWarning` once per layer; ``min_tier``: the cheapest bound tried
    per step (0: the norm-ball bound, then the exact hull bound only at or above ``threshold``; 1: the exact hull
    bound every step, ~10x the cost). Use as a context manager or call
    :meth:`close`. Results: ``history`` (plain dicts), :meth:`to_pandas`, :meth:`report_data`,
    :meth:`report`, :meth:`summary`.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, layers=None, threshold: float = 0.5,
                 full_every: int | None = None, topology_every: int | None = 100, maxdim: int = 1,
                 n_perm: int | str | None = 256, neighbors: int = 2, power_iters: int = 20, seed: int = 0,
                 warn: bool = True, min_tier: int = 0):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise TopoverifyError(f"threshold must be in (0, 1] (the per-step bound on lr*K at or above which the "
                                  f"full evaluation runs; lr*K < 1 is the preserving phase), got {threshold!r}; "
                                  f"e.g. threshold=0.5.")
        for name, v in (("full_every", full_every), ("topology_every", topology_every)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise TopoverifyError(f"{name} must be None or an int >= 1 (a number of steps), got {v!r}.")
        if min_tier not in (0, 1) or isinstance(min_tier, bool):
            raise TopoverifyError(f"min_tier must be 0 (the cheap norm-ball bound first, the exact hull bound only "
                                  f"near the threshold) or 1 (the exact hull bound at every step), got {min_tier!r}.")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TopoverifyError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}; "
                                  f"pass the optimizer your loop steps.")
        require_full_precision(model)
        try:
            # active dropout is fine here: the hooks read the user's own pass, with its masks
            found = resolve_layers(model, layers, deterministic=False)
        except LayoutError as exc:
            raise TopoverifyError(
                f"TopologyMonitor: {exc} Fix: pass layers=[...] with topoverify.explicit_layer(...) or layers "
                f"from topoverify.detect_layers on a model whose hidden layers are Linear/Conv2d -> activation "
                f"-> Linear/Conv2d.") from exc
        self.model, self.optimizer = model, optimizer
        self.threshold, self.full_every, self.topology_every = float(threshold), full_every, topology_every
        self.maxdim, self.n_perm, self.neighbors, self.power_iters, self.seed = maxdim, n_perm, neighbors, \
            power_iters, seed
        self.warn, self.min_tier = warn, min_tier
        self.steps = 0
        self._layers = [_Layer(model, layer, seed) for layer in found]
        self._log = MonitorHistory(type(optimizer).__name__, [lay.name for lay in self._layers], self.threshold)
        self._kind, self._no_rule = self._rule_kind(optimizer)
        self._closed = False
        self._handles = [optimizer.register_step_pre_hook(self._before_step),
                         optimizer.register_step_post_hook(self._after_step)]

    # ------------------------------------------------------------------------------------------------------
    @property
    def history(self) -> list[dict]:
        """One record per step and layer (keys in :data:`topoverify.monitor.history.RECORD_KEYS`)."""
        return self._log.records

    @property
    def layers(self) -> list[str]:
        return [lay.name for lay in self._layers]

    def _rule_kind(self, optimizer) -> tuple[str, str]:
        try:
            rule = rule_for(optimizer)
        except UnsupportedError as exc:
            msg = (f"TopologyMonitor: {exc} The monitor keeps running: every step is recorded with phase "
                   f"'unknown' and this reason; topology snapshots are still taken.")
            warnings.warn(msg, UserWarning, stacklevel=3)
            self._log.warnings.append(msg)
            return "none", str(exc)
        return ("sgd" if rule is SGD_RULE else "adaptive"), ""

    def _every(self, bounded: bool) -> int | None:
        """The full-evaluation interval: ``full_every``, or :data:`ADAPTIVE_FULL_EVERY` without a per-step bound."""
        return self.full_every if (self.full_every is not None or bounded) else ADAPTIVE_FULL_EVERY

    # ------------------------------------------------------------------------------------------------------
    def _before_step(self, optimizer, args, kwargs) -> None:
        t = self.steps
        # torch passes step's own arguments, the optimizer first: (optimizer, closure?) and kwargs
        rest = args[1:] if args and args[0] is optimizer else args
        closure = rest[0] if rest else kwargs.get("closure")
        for lay in self._layers:
            lay.tier = None
            rec = self._layer_step(lay, t) if closure is None else self._closure_step(lay, t)
            self._log.add(rec, tier=lay.tier if rec["covered"] or rec["evaluated"] else None)
            if rec["phase"] == BREAKDOWN_POSSIBLE and not lay.warned:
                lay.warned = True
                bound = f"certified per-step bound {fmt(rec['lrK_bound'])}" if rec["covered"] else "no per-step bound"
                msg = (f"layer {lay.name!r} at step {t}: lr*K_eff = {rec['lrK_estimate']:.4g} (estimate) >= 1, "
                       f"phase breakdown-possible: its neuron cloud's topology may change at this step ({bound}).")
                self._log.warnings.append(msg)
                if self.warn:
                    warnings.warn(msg, TopologyBreakdownWarning, stacklevel=4)
        if self.topology_every is not None and t % self.topology_every == 0:
            self._topology(t)

    def _after_step(self, optimizer, _args, _kwargs) -> None:
        self.steps += 1
        for lay in self._layers:
            tr = lay.track
            if tr.rho is None or not tr.lrK < 1:
                tr.cloud_after = tr.buffer_after = None
                continue
            tr.cloud_after = neuron_cloud(self.model, lay.layer)
            tr.buffer_after = _bound.buffer_cloud(self.model, self.optimizer, lay.layer)

    def _closure_step(self, lay: _Layer, t: int) -> dict:
        """``optimizer.step(closure)``: the closure's backward runs inside step(), after this pre-hook, so what
        was captured belongs to an earlier pass: discarded, and the step is not covered."""
        if lay.capture is not None:
            lay.capture.take()
        lay.track.forget()
        reason = ("optimizer.step(closure): the closure's forward/backward run inside step(), after the monitor "
                  "reads the step, so the captured gradient is an earlier one; not covered")
        return dict(step=t, layer=lay.name, lr=self._lr(lay), lrK_bound=None, lrK_estimate=None,
                    lrK_certified=None, evaluated=False, phase=UNKNOWN, covered=False,
                    reason=f"{self._no_rule}; {reason}" if self._kind == "none" else reason)

    def _layer_step(self, lay: _Layer, t: int) -> dict:
        rec = dict(step=t, layer=lay.name, lr=self._lr(lay), lrK_bound=None, lrK_estimate=None,
                   lrK_certified=None, evaluated=False, phase=UNKNOWN, covered=False, reason="")
        pairs, forwards = lay.capture.take() if lay.capture is not None else ([], 0)
        try:
            return self._evaluate(lay, t, rec, pairs, forwards)
        except TopoverifyError as exc:
            lay.track.forget()
            rec.update(lrK_bound=None, covered=False, evaluated=False, phase=UNKNOWN, reason=str(exc))
            return rec

    def _evaluate(self, lay: _Layer, t: int, rec: dict, pairs, forwards) -> dict:
        if self._kind == "none":
            rec["reason"] = self._no_rule
            return rec
        if lay.capture is None:
            samples_from_captures(self.model, lay.layer, [])  # raises: explicit layouts have no T1 field
        W, A = _bound.part_norms(lay.layer, lay.params, lay.n_w)
        cloud = None
        if not (math.isfinite(W) and math.isfinite(A)):
            cloud = neuron_cloud(self.model, lay.layer)
            if not bool(torch.isfinite(cloud).all()):
                lay.track.forget()
                rec["reason"] = "the neuron parameters contain NaN/Inf: training has diverged before this step"
                return rec
        if not pairs:
            lay.track.forget()
            rec["reason"] = (f"no backward pass was captured since the last step ({forwards} forward pass(es) with "
                             f"grad, none back-propagated): optimizer.step() without loss.backward(), or a "
                             f"closure-based optimizer (LBFGS) whose passes run inside step(); not covered")
            return rec
        samples = samples_from_captures(self.model, lay.layer, pairs, step=t)
        check = _bound.check_field(samples, _bound.point_rows(lay.layer, lay.params, lay.check_idx),
                                   _bound.grad_rows(self.model, lay.layer, lay.check_idx, lay.params))
        if check.scale is None:
            lay.track.forget()
            rec["reason"] = check.reason
            return rec
        reasons = [check.reason] if check.reason else []
        bound, tier = None, None
        every = self._every(self._kind == "sgd")
        scheduled = every is not None and t % every == 0
        if self._kind == "sgd":
            bound, why, tier, cloud = self._sgd_bound(lay, samples, cloud, W, A, check.scale, scheduled, t)
            if why:
                reasons.append(why)
        else:
            reasons.append(f"no per-step bound for {type(self.optimizer).__name__}: its K_eff has all-pairs "
                           f"state ratios and L_g ~ 1/eps makes a multiplicative bound vacuous; full evaluation "
                           f"every {every} steps")
        covered = bound is not None and math.isfinite(bound)
        bound = bound if covered else None
        if not covered and self._kind == "sgd":
            every = self._every(False)
            scheduled = every is not None and t % every == 0
        evaluate = (covered and bound >= self.threshold) or scheduled
        rec.update(lrK_bound=bound, covered=covered, phase=PRESERVING if covered else UNKNOWN)
        lay.tier = tier if covered else None
        if evaluate:
            if check.scale != 1.0:  # Φ is linear in D: the clipped gradient is the field of (H, s·D)
                samples = BlockSamples(samples.H, samples.D * check.scale, samples.activation, samples.has_bias)
            cloud = neuron_cloud(self.model, lay.layer) if cloud is None else cloud
            lp = predict_layer(self.model, self.optimizer, lay.layer, samples, neighbors=self.neighbors,
                               power_iters=self.power_iters, generator=torch.Generator().manual_seed(self.seed),
                               step=t, cloud=cloud)
            rec["evaluated"] = True
            lay.tier = 2
            if lp.available:
                rec.update(lrK_estimate=lp.lr * lp.K_eff, lrK_certified=lp.lr * lp.K_eff_upper, phase=lp.phase)
                self._tighten(lay, lp)
            else:
                rec["phase"] = UNKNOWN
                reasons.append(lp.reason)
        rec["reason"] = "; ".join(reasons)
        return rec

    def _sgd_bound(self, lay: _Layer, samples: BlockSamples, cloud, W: float, A: float, scale: float,
                   scheduled: bool, t: int) -> tuple[float | None, str, int, torch.Tensor | None]:
        """lr·K_eff_upper for torch.optim.SGD (:mod:`topoverify.monitor.bound`) from the cheapest tier below the
        threshold (0: norm bounds; 1: the exact hull bound, also on scheduled full evaluations so the record
        equals predict_step's there), a reason when not finite, the tier, and the cloud if it was read."""
        step_map, group = _bound.cached_step_map(self.optimizer, self.model, lay)
        mu, tau = float(group["momentum"]), float(group["dampening"])
        decay_max = max(step_map.weight_decay, default=0.0)
        buffer = step_map.state.get("momentum_buffer")
        tr = lay.track
        rho = 0.0
        if buffer is not None and step_map.coef_buffer != 0:
            cloud = neuron_cloud(self.model, lay.layer) if cloud is None else cloud
            if tr.continues(cloud, buffer, t):
                rho = _bound.buffer_ratio_step(tr.rho, tr.K_G, tr.lrK, tr.momentum, tr.dampening)
            else:  # restart: exact pairwise ratio (as predict_step computes it)
                rho = max_pair_ratio(cloud, buffer)

        def lr_k(K_G: float) -> float:
            return _bound.round_up(step_map.lr * momentum_K_eff_numeric(step_map.coef_grad, step_map.coef_buffer,
                                                                        K_G, rho))

        if self.min_tier == 0:
            K_G, why = _bound.tier0_lipschitz_upper(samples, W, A, decay_max, scale)
            lrK, tier = lr_k(K_G), 0
        else:
            K_G, why, lrK, tier = math.inf, "", math.inf, 0
        if scheduled or not lrK < self.threshold:
            cloud = neuron_cloud(self.model, lay.layer) if cloud is None else cloud
            K_G1, why = _bound.gradient_lipschitz_upper(samples, cloud, decay_max, scale)
            if K_G1 <= K_G or not math.isfinite(K_G):
                K_G, lrK, tier = K_G1, lr_k(K_G1), 1
            else:
                why = ""
        if mu > 0:
            tr.rho = rho if buffer is not None else None
            tr.K_G, tr.lrK, tr.momentum, tr.dampening = K_G, lrK, mu, tau
            tr.coefs = (step_map.coef_grad, step_map.coef_buffer, step_map.lr)
            tr.step = t
        else:  # a step without momentum leaves the buffer alone but moves θ: the recursion cannot span it
            tr.forget()
        if not math.isfinite(lrK):
            if not why:
                why = "two coincident neurons carry different momentum buffers (rho_b = inf)"
            return math.inf, f"certified bound infinite: {why}", tier, cloud
        return lrK, "", tier, cloud

    def _tighten(self, lay: _Layer, lp) -> None:
        """After a full evaluation, restart the recursion from the exact ρ_b if it is smaller."""
        tr = lay.track
        if tr.rho is None or lp.momentum_rho is None or not lp.momentum_rho < tr.rho:
            return
        c_g, c_b, lr = tr.coefs
        tr.rho = lp.momentum_rho
        tr.lrK = _bound.round_up(lr * momentum_K_eff_numeric(c_g, c_b, tr.K_G, tr.rho))

    def _lr(self, lay: _Layer) -> float | None:
        try:
            lr = _bound.cached_groups(self.optimizer, self.model, lay)[0].get("lr")
        except TopoverifyError:
            return None
        try:
            return float(lr)
        except (TypeError, ValueError):
            return None

    def _topology(self, t: int) -> None:
        for lay in self._layers:
            cloud = neuron_cloud(self.model, lay.layer).to(torch.float64)
            if not bool(torch.isfinite(cloud).all()):
                continue
            snap = topology_snapshot(cloud, t, maxdim=self.maxdim, n_perm=self.n_perm, keep_diagrams=False)
            self._log.topology.append(dict(step=t, layer=lay.name, betti=list(snap.betti),
                                           betti_low=list(snap.low), betti_high=list(snap.high),
                                           distinct=snap.distinct,
                                           max_log_persistence=list(snap.max_log_persistence)))

    # ------------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Take the final topology snapshot and remove every hook (module, tensor and optimizer hooks)."""
        if self._closed:
            return
        self._closed = True
        for handle in self._handles:
            handle.remove()
        for lay in self._layers:
            if lay.capture is not None:
                lay.capture.close()
        if not any(s["step"] == self.steps for s in self._log.topology):
            self._topology(self.steps)

    def __enter__(self) -> TopologyMonitor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def to_pandas(self):
        """``history`` as a pandas DataFrame (TopoverifyError naming ``pip install pandas`` without pandas)."""
        return self._log.to_pandas()

    def report_data(self) -> dict:
        """Plain data for :meth:`topoverify.reports.document.Report.add_monitor` (keys in
        :meth:`topoverify.monitor.history.MonitorHistory.report_data`)."""
        return self._log.report_data(self.steps)

    def report(self, out_dir, *, title: str = "Training run"):
        """Write the report of this run (``report.html``, ``report.md``, ``report.json``, figures) to ``out_dir``;
        returns :class:`topoverify.reports.document.ReportFiles`."""
        from topoverify.reports.document import Report  # lazy: the report machinery is heavy
        doc = Report(title, description=f"TopologyMonitor on {type(self.model).__name__} trained by "
                                        f"{type(self.optimizer).__name__} for {self.steps} steps.")
        doc.add_monitor(self.report_data(), title=title)
        return doc.write(out_dir)

    def summary(self) -> str:
        """A short table: per layer, steps covered by the bound, evaluated, max lr·K bound and estimate, phase."""
        return self._log.summary(self.steps)

    def __str__(self) -> str:
        return self.summary()


__all__ = ["TopologyMonitor", "TopologyBreakdownWarning", "ADAPTIVE_FULL_EVERY"]
