"""A configuration field and the values it allows, declared beside it: `setting(default, at_least=1)`.

    num_samples: int = setting(30, at_least=1)           # a dataclass field whose Check refuses 0 at load
    backend: str = setting("vllm", one_of=BACKENDS)      # one of a registry's names

config/load.py applies every field's Check to the whole tree before anything starts; sections add the rules
between their own fields (and with other sections) in their `rules(run)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Collection


SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")  # in a variable's name: never written into a run's files


@dataclass(frozen=True)
class Check:
    """The values a field allows. None always passes (an optional setting that is off)."""

    at_least: float | None = None
    above: float | None = None
    within: tuple[float, float] | None = None
    low_open: bool = False  # within (low, high] instead of [low, high]
    one_of: Collection[str] | None = None  # a registry of names
    off: int | None = None  # a value outside the range that turns the setting off (top_k: -1)

    def problem(self, value: Any) -> str | None:
        if isinstance(value, list):  # a list of names: each is checked
            return next((p for p in map(self.problem, value) if p), None)
        if value is None or (self.off is not None and value == self.off):
            return None
        if self.one_of is not None and value not in self.one_of:
            return f"unknown value {value!r}; known: {', '.join(sorted(self.one_of))}"
        if self.at_least is not None and value < self.at_least:
            off = f"{self.off} (off) or " if self.off is not None else ""
            return f"must be {off}at least {self.at_least}, got {value}"
        if self.above is not None and value <= self.above:
            return f"must be above {self.above}, got {value}"
        if self.within is not None:
            low, high = self.within
            if not (low < value <= high if self.low_open else low <= value <= high):
                return f"must be in {'(' if self.low_open else '['}{low}, {high}], got {value}"
        return None


def setting(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None, **check: Any) -> Any:
    """A dataclass field with its Check (at_least, above, within, low_open, one_of, off)."""
    value = {"default_factory": factory} if factory is not None else {"default": default}
    return field(metadata={"check": Check(**check)} if check else {}, **value)


class ConfigError(ValueError):
    """A configuration problem, with the file and key it concerns in the message."""
