"""Data sources: `digits` (embedded default), `fashion-mnist`, `imagefolder`, `cifar10`, `hf`, `synthetic`."""

from slimkit.data.base import DataBundle, ImageTensorDataset, load_data, register_source, list_sources

__all__ = ["DataBundle", "ImageTensorDataset", "load_data", "register_source", "list_sources"]
