"""The lightweight architectures of the literature, registered into timm on import.

Each family lives in its own module; importing this package registers them all
with timm's `register_model`, so `timm.create_model("NAME")` finds them.
"""

import importlib
import pkgutil

# Import every family module so its @register_model decorators run.
for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

# Searched children (`slimkit search run`) are rebuilt by name like the zoo's models.
importlib.import_module("slimkit.search.child")
importlib.import_module("slimkit.search.sorted")  # SortedNet run directories, loaded by name too
