"""Compression: structured/unstructured pruning, distillation and quantization, chained by recipes."""
