"""Verified export (ONNX fp32/int8) and edge techniques."""
