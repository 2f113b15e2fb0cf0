"""One registry for every kind of plug-in: criteria, quantizers, exporters, distillers, steps, data sources.

    CRITERIA = Registry("criterion", modules={"lrp": "slimkit.compress.prune.lrp"})

    @CRITERIA.register("l1")
    def l1(...): ...

    CRITERIA.get("L1")      # the registered object
    CRITERIA.get("l3")      # BadInputError: unknown criterion 'l3'; choose from ... (did you mean 'l1'?)

One naming scheme for every lookup: case does not matter and '-' and '_' are the same
letter ("bn-scale" finds "bn_scale", "Fashion_MNIST" finds "fashion-mnist"). Built-in
plug-ins that live in modules with heavy imports are named in `modules` and imported on
first use, so `import slimkit` stays light.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Generic, Iterator, TypeVar

from slimkit.errors import BadInputError, SlimkitError

__all__ = ["Registry"]

T = TypeVar("T")


def _key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


class Registry(Generic[T]):
    """Named plug-ins of one kind, with metadata, lazy built-ins and one-line lookup errors."""

    def __init__(self, kind: str, *, modules: dict[str, str] | None = None,
                 error: type[SlimkitError] = BadInputError) -> None:
        self.kind = kind
        self.modules = modules if modules is not None else {}  # name -> module whose import registers it
        self.error = error
        self._entries: dict[str, tuple[str, T, dict[str, Any]]] = {}  # key -> (name, object, metadata)

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name` (a later registration replaces it)."""

        def deco(obj: T) -> T:
            self.add(name, obj, **meta)
            return obj

        return deco

    def add(self, name: str, obj: T, **meta: Any) -> None:
        if not str(name).strip():
            raise ValueError(f"a {self.kind} needs a non-empty name")
        self._entries[_key(name)] = (str(name), obj, meta)

    def pop(self, name: str) -> T | None:
        """Unregister `name`; returns what was registered (None if nothing)."""
        entry = self._entries.pop(_key(name), None)
        return entry[1] if entry else None

    def _load(self, key: str) -> None:
        for name, module in self.modules.items():
            if _key(name) == key:
                importlib.import_module(module)

    def _entry(self, name: str) -> tuple[str, T, dict[str, Any]]:
        key = _key(name)
        if key not in self._entries:
            self._load(key)
        if key not in self._entries:
            raise self.error(self.unknown_message(name))
        return self._entries[key]

    def unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(_key(name), [_key(n) for n in names], n=3, cutoff=0.5)
        by_key = {_key(n): n for n in names}
        hint = f" (did you mean {', '.join(repr(by_key[c]) for c in close)}?)" if close else ""
        return f"unknown {self.kind} {name!r}; choose from {', '.join(names)}{hint}"

    def get(self, name: str) -> T:
        """The object registered as `name`, or a one-line error naming the closest matches."""
        return self._entry(name)[1]

    def meta(self, name: str) -> dict[str, Any]:
        """The metadata given at registration (e.g. needs_data=True)."""
        return self._entry(name)[2]

    def canonical(self, name: str) -> str:
        """`name` as it was registered ("BN-Scale" -> "bn_scale")."""
        return self._entry(name)[0]

    def names(self) -> list[str]:
        """Every registered name and every lazily loaded built-in, sorted."""
        found = {key: entry[0] for key, entry in self._entries.items()}
        for name in self.modules:
            found.setdefault(_key(name), name)
        return sorted(found.values())

    def load_all(self) -> None:
        """Import every lazily registered built-in (for listings with documentation)."""
        for module in dict.fromkeys(self.modules.values()):
            importlib.import_module(module)

    def __contains__(self, name: object) -> bool:
        key = _key(str(name))
        return key in self._entries or any(_key(n) == key for n in self.modules)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
