"""The one registry helper: named entries filled by a decorator, looked up with a one-line did-you-mean error.

Backbones (:data:`harness.models.BACKBONES`), optimisers (:data:`harness.optimizers.OPTIMIZERS`) and
datasets (:data:`harness.data.DATASETS`) are each a :class:`Registry` of frozen entry dataclasses. An
entry type has the fields ``name``, ``summary`` and ``factory`` plus its own metadata (a backbone's
input convention, a dataset's title and default K values); ``registry.register(**metadata)`` decorates
a factory and records it under its function name, with its docstring's first line as the summary.
A registry reads like a ``dict`` of its entries (in registration order); :meth:`Registry.lookup` is the
lookup for user input: an unknown name is a :class:`~harness.errors.UserError` naming the close matches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, Generic, TypeVar

from harness.errors import UserError, did_you_mean

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def summary_of(factory: Callable[..., Any]) -> str:
    """The first line of ``factory``'s docstring (empty without one)."""
    return (factory.__doc__ or "").strip().split("\n", 1)[0]


class Registry(MutableMapping[str, T], Generic[T]):
    """Entries of one kind by name: ``kind`` names them in messages, ``where`` is their config key.

    ``entry_type`` builds an entry from ``name=``, ``summary=``, ``factory=`` and the metadata given to
    :meth:`register`. Registering a name twice is a programming error (RuntimeError), not a replacement.
    """

    def __init__(self, kind: str, where: str, entry_type: Callable[..., T]) -> None:
        self.kind = kind
        self.where = where
        self.entry_type = entry_type
        self._entries: dict[str, T] = {}

    def register(self, **metadata: Any) -> Callable[[F], F]:
        """Decorator: record a factory under its function name, with ``metadata`` and its summary line."""

        def decorate(factory: F) -> F:
            name = factory.__name__
            self[name] = self.entry_type(name=name, summary=summary_of(factory), factory=factory, **metadata)
            return factory

        return decorate

    def lookup(self, name: str) -> T:
        """The entry of ``name``; an unknown name is one line naming the config key and the close matches."""
        if name not in self._entries:
            raise UserError(f"{self.where}: {self.unknown(name)}")
        return self._entries[name]

    def unknown(self, name: str) -> str:
        """``"unknown <kind> 'x'; did you mean ...?"`` for an unregistered name (names are lower case)."""
        return f"unknown {self.kind} {name!r}{did_you_mean(str(name).lower(), list(self._entries))}"

    def check(self, name: str) -> str:
        """``name`` when it is registered, else ValueError (pydantic makes it a one-line config error)."""
        if name not in self._entries:
            raise ValueError(self.unknown(name))
        return name

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __setitem__(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise RuntimeError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
