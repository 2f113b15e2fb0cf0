"""One way to name any model: timm, torchvision, slimkit model directories, user files."""

from slimkit.models.resolve import ModelInfo, available_model_names, is_code_spec, load_model
from slimkit.models.modeldir import is_model_dir, load_model_dir, save_model_dir

__all__ = ["ModelInfo", "load_model", "available_model_names", "save_model_dir", "load_model_dir", "is_model_dir",
           "is_code_spec"]
