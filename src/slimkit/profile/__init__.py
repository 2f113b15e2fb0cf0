"""Exact cost: MACs (attention included), params, peak activation memory, size, latency.

`profile(model_or_name)` returns a `Profile`; `count_macs(model, x)` is the counter alone.
"""

from slimkit.profile.counter import MacCount, count_macs
from slimkit.profile.handlers import register_mac_handler
from slimkit.profile.profiler import LayerRow, Profile, profile
from slimkit.profile.timing import Timing, measure_interleaved

__all__ = ["profile", "Profile", "LayerRow", "count_macs", "MacCount", "register_mac_handler", "measure_interleaved", "Timing"]
