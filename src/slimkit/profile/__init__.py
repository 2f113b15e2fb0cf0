"""Exact cost: MACs (attention included), params, peak activation memory, size, latency."""
