"""One plugin registry, used for both plug-in interfaces: embedder kinds
(:mod:`lookalike.models.base`) and index kinds (:mod:`lookalike.index.base`).

Built-ins are named ``"module:Class"`` and imported on first use, so importing lookalike never
pulls in torch or FAISS; plugins add themselves with :meth:`Registry.register`. A registry is a
table of classes (like an entry-point table), process-wide on purpose; it holds no data.
Imports nothing of lookalike but the errors.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from lookalike.errors import UnknownNameError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Names -> classes. ``what`` names the entries in errors (``unknown embedder 'x'``)."""

    def __init__(self, what: str, builtin: Mapping[str, str]) -> None:
        self.what = what
        self._builtin = dict(builtin)  # name -> "module:Class", not imported yet
        self._classes: dict[str, T] = {}
        self._lock = threading.Lock()

    def register(self, kind: str) -> Callable[[T], T]:
        """Class decorator: make a class available under ``kind`` (sets ``cls.kind``)."""

        def wrap(cls: T) -> T:
            cls.kind = kind
            with self._lock:
                self._classes[kind] = cls
                self._builtin.pop(kind, None)
            return cls

        return wrap

    def available(self) -> list[str]:
        """Every registered name, built-in or plugged in."""
        return sorted(set(self._builtin) | set(self._classes))

    def __contains__(self, name: object) -> bool:
        return name in self._builtin or name in self._classes

    def get(self, name: str) -> T:
        """The class registered under ``name`` (importing its module on first use); a one-line
        :class:`~lookalike.errors.UnknownNameError` listing the names otherwise."""
        if name not in self._classes and name in self._builtin:
            module, attr = self._builtin[name].split(":")
            cls = getattr(importlib.import_module(module), attr)
            with self._lock:
                self._classes.setdefault(name, cls)
        if name not in self._classes:
            raise UnknownNameError(f"unknown {self.what} {name!r}; available: "
                                   f"{', '.join(self.available())}")
        return self._classes[name]


__all__ = ["Registry"]
