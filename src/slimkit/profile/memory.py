"""Measured peak activation memory: the CPU allocator's own events during one forward pass."""

from __future__ import annotations

import contextlib
import os
import logging

import torch
import torch.nn as nn

__all__ = ["measure_peak_activation_bytes"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet_native_output():
    """Silence the profiler backend's C++ start/stop chatter on fd 1 and 2 (it bypasses sys.stderr)."""
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "wb") as null:
        try:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def measure_peak_activation_bytes(model: nn.Module, example: torch.Tensor) -> int | None:
    """Peak bytes allocated during `model(example)` plus the input itself; model unchanged.

    Uses torch.profiler's memory events (allocations are charged to the op that made
    them, frees arrive as `[memory]` events), replayed in time order. Includes kernel
    workspaces the lifetime estimate cannot see. Returns None if the profiler fails.
    """
    from torch.profiler import ProfilerActivity, profile

    try:
        with torch.no_grad():
            model(example)  # warm-up: lazy inits and caches should not count
            with _quiet_native_output(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                model(example)
    except Exception as exc:  # the profiler is an optional view; the estimate still stands
        log.warning("measured peak memory unavailable: %s", exc)
        return None
    points = []
    for event in prof.events():
        delta = event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        if delta:
            points.append((event.time_range.start, delta))
    points.sort()
    live = peak = 0
    for _, delta in points:
        live += delta
        peak = max(peak, live)
    return peak + example.untyped_storage().nbytes()
