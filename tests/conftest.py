"""Hypothesis profiles: ``ci`` (default, fast), ``dev`` and ``nightly`` (thorough).

Select with ``pytest --hypothesis-profile nightly`` or the ``HYPOTHESIS_PROFILE`` environment variable.
"""

import os

from hypothesis import HealthCheck, settings

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=15, derandomize=True, print_blob=True, **_common)
settings.register_profile("dev", max_examples=40, **_common)
settings.register_profile("nightly", max_examples=400, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Under pytest-xdist (``-n 2``, the default in pyproject.toml) each worker computes on one thread, so that two
# workers share the machine's cores instead of each taking all of them (round-off-sensitive tests pass on any
# thread count: CI runs them again under OMP_NUM_THREADS=1).
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)
