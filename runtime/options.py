"""Options: what ``--opt key=value`` (and a strategy's or a precision's knobs) may say, and how
a given value is checked. Shared by every kind of plugin (video models, decoder families,
strategies, heads) and by the export side; nothing here knows a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import EdgertError


@dataclass(frozen=True)
class Option:
    """An ``--opt key=value`` export option (or a strategy's): default, parser, help, allowed
    values. ``names``: what a value names on the machine it runs on — ``"bundle"`` (a bundle
    folder) or ``"file"`` (a file it may read; ``builtin`` lists the values that read none).
    A served request never gives such a value itself (edgert/serve/decoder.py). ``training``:
    the option shapes training only; the manifest says so and ``edgert info`` leaves it out of
    what the bundle was built with."""

    default: Any
    help: str
    parse: Callable[[str], Any] = str
    choices: tuple = ()
    names: str = ""
    builtin: tuple = ()
    training: bool = False  # used by training only (dropout): the exported graph does not depend on it

    def convert(self, key: str, raw: Any, flag: str = "--opt") -> Any:
        try:
            value = self.parse(raw) if isinstance(raw, str) else raw
        except ValueError:
            raise EdgertError(f"{flag} {key}={raw}: expected {self.parse.__name__}") from None
        if self.choices and value not in self.choices:
            raise EdgertError(f"{flag} {key}={raw}: expected one of {list(self.choices)}")
        return value


@dataclass(frozen=True)
class Fixed:
    """What a checkpoint says about an option (see ``Detector.checkpoint_options``)."""

    value: Any
    evidence: str          # for messages: where in the checkpoint it was read
    strict: bool = True    # False: only a default, an --opt may differ (e.g. read off a file name)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


positive_int.__name__ = "a positive integer"


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


non_negative_int.__name__ = "an integer >= 0"


def probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(text)
    return value


probability.__name__ = "a number from 0 to 1"


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


boolean.__name__ = "true or false"


def resolve_options(owner: str, options: dict[str, Option], given: dict[str, Any], flag: str = "--opt") -> dict[str, Any]:
    """Every declared option's value: the given one converted, else its default. ``owner``
    names who declares them in the error (a model, a strategy, a precision); ``flag`` is the
    command-line spelling the messages use."""
    unknown = sorted(set(given) - set(options))
    if unknown:
        raise EdgertError(f"{owner}: unknown option {unknown[0]!r}; options are {sorted(options) or 'none'}")
    return {key: opt.convert(key, given[key], flag) if key in given else opt.default for key, opt in options.items()}
