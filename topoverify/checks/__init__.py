"""One checker per claim of ``spec/claims.toml`` (its ``checker`` key), each holding the claim against real runs:

* T1 :func:`.field_identity.check_field_identity` — every neuron's gradient is one field at that neuron;
* T2 :func:`.step_bounds.verify_step` — the one-step ratio band (1 ∓ lr·K) on a real step
  (prediction from the pre-step state: :func:`.step_prediction.predict_step`); also T7's momentum form;
* T3 :func:`.critical_rate.check_critical_rate` — runs certified below η* stay within the accumulated
  T4/T5 bounds at the recorded steps;
* T4 :func:`.multistep.verify_steps` — the product bound over a run, K_t at each step's pre-step state;
* T5 :func:`.persistence.check_persistence_stability` — log-scale diagrams move by at most ε;
* T6 :func:`.merges.check_identical_neurons` — merged neurons stay merged;
* T9 :func:`.architecture.check_unit_layouts` — which units of real architectures (MLP units, attention heads
  and their query/key and value/output dims, BatchNorm channels, residual streams) are permutable, and where one
  field holds;
* permutation equivariance of any optimizer (T1(a), T6's E1): :mod:`.equivariance`.

T8 (lr·K at every step) is recorded by :func:`topoverify.experiments.rate_sweep.sweep`.
"""

from topoverify.lazy import lazy_names as _lazy_names

# submodules on attribute access (topoverify.lazy), as after the eager imports of earlier versions
__getattr__, __dir__ = _lazy_names(__name__, {})
