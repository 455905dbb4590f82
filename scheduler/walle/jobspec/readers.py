"""How one value of a spec is read: the field readers (types, ranges, sizes, durations, paths,
text), the report that collects every problem of a spec in one pass, and the wording of the
problems (the field's path and what is allowed there)."""


from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from walle.jobspec.grammar import ROOT, grammar
from walle.jobspec.model import (
    Range,
)


@dataclass(frozen=True)
class Problem:
    path: str  # field path, e.g. "resources.cpu" or "stop.pre_stop[1]"
    message: str  # what is wrong and what is allowed

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecError(ValueError):
    """A spec with one or more problems; `str()` gives one line per problem."""

    def __init__(self, problems: list[Problem], source: str = "<input>") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(f"{self.source}: {p.path}: {p.message}" for p in self.problems)



class _Report:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))


# ---------------------------------------------------------------- field readers


def _fields(r: _Report, value: object, path: str, allowed: tuple[str, ...]) -> dict | None:
    """The known keys of a mapping; unknown keys are problems. A null value counts as absent."""
    if not isinstance(value, Mapping):
        r.add(path, f"expected a mapping with keys from {_alts(allowed)}, got {_describe(value)}")
        return None
    known = {}
    for key, val in value.items():
        if not isinstance(key, str) or key not in allowed:
            where = _at(path, key) if isinstance(key, str) and _printable(key) else path
            r.add(where, f"unknown key {_show(key)}{_did_you_mean(key, allowed)}; "
                         f"allowed: {_alts(allowed)}")
        elif val is not None:
            known[key] = val
    return known


def _required(r: _Report, f: dict, key: str, read: Callable, hint: str, parent: str = ROOT):
    path = _at(parent, key)
    if key not in f:
        r.add(path, f"required: {hint}")
        return None
    return read(r, f[key], path)


def _optional(r: _Report, f: dict, key: str, read: Callable, parent: str = ROOT):
    return read(r, f[key], _at(parent, key)) if key in f else None


def _list_of(read: Callable) -> Callable:
    def parse(r: _Report, value: object, path: str) -> tuple | None:
        if not isinstance(value, list | tuple):
            r.add(path, f"expected a list, got {_describe(value)}")
            return None
        items = [read(r, item, f"{path}[{i}]") for i, item in enumerate(value)]
        return None if any(item is None for item in items) else tuple(items)

    return parse


def _choice(choices: tuple[str, ...]) -> Callable:
    def parse(r: _Report, value: object, path: str) -> str | None:
        if isinstance(value, str) and value in choices:
            return value
        shown = _show(value) if isinstance(value, str) else _describe(value)
        r.add(path, f"{shown} is not allowed; use one of {_alts(choices)}"
                    f"{_did_you_mean(value, choices)}")
        return None

    return parse


def _integer(low: int, high: int) -> Callable:
    def parse(r: _Report, value: object, path: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            r.add(path, f"expected a whole number from {low} to {high}, got {_describe(value)}")
            return None
        return value

    return parse


def _boolean(r: _Report, value: object, path: str) -> bool | None:
    if not isinstance(value, bool):
        r.add(path, f"expected true or false, got {_describe(value)}")
        return None
    return value


def _duration(low: float, high: float) -> Callable:
    def parse(r: _Report, value: object, path: str) -> float | None:
        seconds = _by_grammar(r, grammar.parse_duration, value, path, shown=True)
        if seconds is not None and not low <= seconds <= high:
            show = grammar.format_duration
            r.add(path, f"must be between {show(low)} and {show(high)}, got {show(seconds)}")
            return None
        return seconds

    return parse


def _cores(r: _Report, value: object, path: str) -> float | None:
    return _by_grammar(r, grammar.parse_cpus, value, path, shown=True)


def _size(r: _Report, value: object, path: str) -> int | None:
    return _by_grammar(r, grammar.parse_size, value, path, shown=True)


def _by_grammar(r: _Report, check: Callable, value: object, path: str, shown: bool = False):
    """Apply one rule of the node's grammar; its ValueError becomes the field's problem."""
    try:
        return check(value)
    except ValueError as exc:
        r.add(path, f"{exc}, got {_describe(value)}" if shown else str(exc))
        return None


def _range(r: _Report, value: object, path: str, one: Callable) -> Range | None:
    if isinstance(value, Mapping):
        f = _fields(r, value, path, ("min", "max"))
        if f is None:
            return None
        low = _required(r, f, "min", one, "the guaranteed amount", path)
        high = _optional(r, f, "max", one, path) if "max" in f else low
    elif isinstance(value, str) and "-" in value.strip():
        left, _, right = value.strip().partition("-")
        before = len(r.problems)
        low, high = one(r, left, path), one(r, right, path)
        if len(r.problems) > before:
            r.problems[before:] = [Problem(path, f"bad range {_show(value)}: write 'min-max', "
                                                 f"{r.problems[before].message}")]
    else:
        low = high = one(r, value, path)
    if low is None or high is None:
        return None
    if low > high:
        r.add(path, f"the minimum ({_num(low)}) is larger than the maximum ({_num(high)})")
        return None
    return Range(min=low, max=high)


def _abs_path(r: _Report, value: object, path: str) -> str | None:
    text = _text(r, value, path)
    return None if text is None else _by_grammar(r, grammar.check_path, text, path)


def _program(r: _Report, value: object, path: str) -> str | None:
    """The program of an Exec*= line (runtime.command, stop.pre_stop[0])."""
    text = _text(r, value, path)
    return None if text is None else _by_grammar(r, grammar.check_executable, text, path)


def _url_path(r: _Report, value: object, path: str) -> str | None:
    text = _text(r, value, path)
    if text is not None and (not text.startswith("/") or any(c.isspace() for c in text)):
        r.add(path, f"{_show(text)} must be a URL path starting with '/' and without spaces")
        return None
    return text


def _argument(r: _Report, value: object, path: str) -> str | None:
    return _scalar_text(r, value, path)


def _scalar_text(r: _Report, value: object, path: str) -> str | None:
    """A string; numbers are turned into their text (YAML reads `8080` as a number)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if grammar.safe_number(value) is None:  # inf, nan, or too many digits to print
            r.add(path, f"expected a string, got {_describe(value)}")
            return None
        return str(value)
    return _text(r, value, path)


def _text(r: _Report, value: object, path: str) -> str | None:
    """A string free of control characters, which could start a new line in a unit file."""
    if not isinstance(value, str):
        quote = "; quote it to keep it as text" if isinstance(value, bool) else ""
        r.add(path, f"expected a string, got {_describe(value)}{quote}")
        return None
    return _by_grammar(r, grammar.check_text, value, path)


# ---------------------------------------------------------------- wording


def _at(path: str, key: object) -> str:
    return str(key) if path == ROOT else f"{path}.{key}"


def _alts(choices: tuple[str, ...]) -> str:
    return ", ".join(choices)


def _did_you_mean(value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value.lower(), choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _printable(text: str) -> bool:
    try:
        return len(grammar.check_text(text)) <= 100
    except ValueError:
        return False


def _show(value: object) -> str:
    """A value quoted for a one-line message: control characters escaped, long text cut."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        if grammar.safe_number(value) is None and isinstance(value, int):
            return f"a number of about {int(abs(value).bit_length() * 0.30103) + 1} digits"
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {_show(value)}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
