"""A monitor for plain PyTorch training loops: lr·K of every neuron layer at every step, from the user's own
forward and backward passes (claims T2, T3, T7; :mod:`topoverify.monitor.monitor`)."""

from topoverify.monitor.history import RECORD_KEYS, MonitorHistory
from topoverify.monitor.monitor import ADAPTIVE_FULL_EVERY, TopologyBreakdownWarning, TopologyMonitor

__all__ = ["TopologyMonitor", "TopologyBreakdownWarning", "MonitorHistory", "RECORD_KEYS", "ADAPTIVE_FULL_EVERY"]

from topoverify.lazy import lazy_names as _lazy_names

# submodules on attribute access (topoverify.lazy), as after the eager imports of earlier versions
__getattr__, __dir__ = _lazy_names(__name__, {})
