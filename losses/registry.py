"""The loss registry: a decorator that registers typed factory functions, and ``build``/``available``.

Each registered factory is a function ``name(**hparams) -> GPWLoss`` with a one-line docstring; its
registration records the paper's row label, equation and the similarities it uses (Table 1), and the
search space a tuner explores for it (:class:`SearchParam` per hyperparameter, with where its range
comes from), so a new loss brings its space with it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from losses.gpw import GPWLoss

Factory = TypeVar("Factory", bound=Callable[..., GPWLoss])


class LossConfigError(ValueError):
    """An unknown loss name, preset or a bad hyperparameter; the message is one line saying what to change."""


@dataclass(frozen=True)
class SearchParam:
    """One searched hyperparameter: a factory keyword, its interval (``log``: sampled on a log scale), its source."""

    name: str
    low: float
    high: float
    log: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"search range of {self.name!r}: low {self.low} must be below high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"search range of {self.name!r}: a log range needs low > 0, got {self.low}")

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the closed interval."""
        return self.low <= value <= self.high


@dataclass(frozen=True)
class LossInfo:
    """What the registry knows about one loss."""

    name: str
    label: str
    equation: str
    similarities: str
    summary: str
    factory: Callable[..., GPWLoss]
    search_space: tuple[SearchParam, ...] = ()


_REGISTRY: dict[str, LossInfo] = {}


def register_loss(
    *, label: str, equation: str, similarities: str, search_space: Sequence[SearchParam] = ()
) -> Callable[[Factory], Factory]:
    """Register a factory under its function name, with the paper's label, equation, similarities and search space.

    Every parameter of ``search_space`` must be a keyword of the factory (checked here, at import).
    """

    def decorate(factory: Factory) -> Factory:
        name = factory.__name__
        if name in _REGISTRY:
            raise RuntimeError(f"loss {name!r} is registered twice")
        keywords = set(inspect.signature(factory).parameters)
        strangers = [p.name for p in search_space if p.name not in keywords]
        if strangers or len({p.name for p in search_space}) != len(search_space):
            raise RuntimeError(
                f"loss {name!r}: search space names {strangers or 'a parameter twice'}; "
                f"its keywords are {sorted(keywords)}"
            )
        summary = (factory.__doc__ or "").strip().splitlines()[0] if factory.__doc__ else ""
        _REGISTRY[name] = LossInfo(name, label, equation, similarities, summary, factory, tuple(search_space))
        return factory

    return decorate


def available() -> list[str]:
    """The registered loss names, sorted."""
    return sorted(_REGISTRY)


def info(name: str) -> LossInfo:
    """The registry entry of ``name``; unknown names raise :class:`LossConfigError`."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3, cutoff=0.5)
        hint = f"close matches: {', '.join(close)}" if close else "no close match"
        raise LossConfigError(f"unknown loss {name!r} ({hint}); available: {', '.join(available())}")
    return _REGISTRY[name]


def build(name: str, **hparams: Any) -> GPWLoss:
    """Build the loss ``name`` with keyword hyperparameters (see each factory for the accepted ones)."""
    entry = info(name)
    accepted = list(inspect.signature(entry.factory).parameters)
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise LossConfigError(
            f"loss {name!r} got unknown hyperparameter(s) {', '.join(unknown)}; it accepts: {', '.join(accepted)}"
        )
    return entry.factory(**hparams)
