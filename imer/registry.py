"""Name -> class registries: adding a method or backend is one file with a decorator."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from imer.errors import UnknownName

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict with a decorator and helpful errors; the kind names what it holds ('method')."""

    def __init__(self, kind: str, loader: Callable[[], None] | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._loader = loader  # imports the package that registers entries, on first use
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            setattr(obj, "registry_name", name)
            return obj

        return deco

    def _ensure_loaded(self) -> None:
        if not self._loaded and self._loader is not None:
            self._loaded = True
            self._loader()

    def get(self, name: str) -> T:
        self._ensure_loaded()
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownName(
                f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._items))})"
            ) from None

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
