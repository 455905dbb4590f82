"""Parameter values: typed, range-checked, coerced from `--set k=v` text by declared type.

Precedence, lowest first: the package's defaults, the values kept from an earlier install
(upgrade), a values file (`-f`), then each `--set`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from walle.catalog.model import CatalogError, Package, Parameter

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
MAX_STRING = 4096  # as a spec's longest text


def check_value(param: Parameter, value: Any, *, from_text: bool,
                check_allowed: bool = True) -> Any:
    """The value as the parameter's type, or CatalogError saying what is expected.
    `from_text`: the value came from the command line, so text is read as the type."""
    value = _coerce(param, value) if from_text and isinstance(value, str) else value
    expected = {"string": str, "integer": int, "number": (int, float), "boolean": bool}
    if isinstance(value, bool) != (param.type == "boolean") or not isinstance(
            value, expected[param.type]):
        raise CatalogError(f"expected {_a(param.type)}, got {_describe(value)}"
                           + ("; quote it in the values file" if param.type == "string"
                              and not from_text else ""))
    if param.type == "number" and not math.isfinite(value):
        raise CatalogError(f"expected a finite number, got {value}")
    if param.type == "string" and len(value) > MAX_STRING:
        raise CatalogError(f"text longer than {MAX_STRING} characters")
    if param.min is not None and value < param.min:
        raise CatalogError(f"{value} is below the minimum {param.min} (range {_range(param)})")
    if param.max is not None and value > param.max:
        raise CatalogError(f"{value} is above the maximum {param.max} (range {_range(param)})")
    if check_allowed and param.allowed and value not in param.allowed:
        raise CatalogError(f"{value!r} is not allowed; choose one of "
                           f"{', '.join(repr(a) for a in param.allowed)}")
    return value


def _coerce(param: Parameter, text: str) -> Any:
    word = text.strip()
    try:
        if param.type == "integer":
            return int(word, 10)
        if param.type == "number":
            return float(word) if any(c in word for c in ".eE") else int(word, 10)
    except ValueError:
        raise CatalogError(f"expected {_a(param.type)}, got {text!r}") from None
    if param.type == "boolean":
        if word.lower() in TRUE_WORDS:
            return True
        if word.lower() in FALSE_WORDS:
            return False
        raise CatalogError(f"expected a boolean (true or false), got {text!r}")
    return text


def parse_sets(items: Sequence[str]) -> dict[str, str]:
    """`k=v` texts from the command line; the value is everything after the first `=`."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CatalogError(f"--set {item!r}: expected NAME=VALUE, e.g. --set port=8081")
        out[key.strip()] = value
    return out


def resolve_values(pkg: Package, *, kept: Mapping[str, Any] | None = None,
                   file_values: Mapping[str, Any] | None = None,
                   sets: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every parameter of the package with its final value; all problems at once.
    Kept values of parameters the package no longer has are dropped (an upgrade may remove
    parameters); given values of unknown parameters are errors."""
    problems: list[str] = []
    failed: set[str] = set()
    values = {p.name: p.default for p in pkg.parameters}
    layers = [(kept or {}, False, "kept value"), (file_values or {}, False, "values file"),
              (sets or {}, True, "--set")]
    for given, from_text, origin in layers:
        if not isinstance(given, Mapping):
            problems.append(f"{pkg.ref}: {origin}: expected a mapping of parameter: value")
            continue
        for name, value in given.items():
            param = pkg.parameter(name) if isinstance(name, str) else None
            if param is None:
                if origin != "kept value":
                    problems.append(f"{pkg.ref}: {origin} {name!r}: unknown parameter"
                                    f"{_suggest(name, pkg)}")
                continue
            try:
                values[name] = check_value(param, value, from_text=from_text)
            except CatalogError as err:
                failed.add(name)
                problems.append(f"{pkg.ref}: {origin} {name}: {err}")
    for param in pkg.parameters:
        if values[param.name] is None and param.name not in failed:
            problems.append(f"{pkg.ref}: parameter {param.name} is required: "
                            f"--set {param.name}=<{param.type}>")
    if problems:
        raise CatalogError(problems)
    return values


def _suggest(name: object, pkg: Package) -> str:
    names = [p.name for p in pkg.parameters]
    near = difflib.get_close_matches(str(name), names, n=1)
    if near:
        return f"; did you mean {near[0]!r}?"
    return f"; {pkg.name} has: {', '.join(names)}" if names else f"; {pkg.name} has none"


def _range(param: Parameter) -> str:
    low = "" if param.min is None else f"{param.min}"
    high = "" if param.max is None else f"{param.max}"
    return f"{low}..{high}"


def _a(kind: str) -> str:
    return "an integer" if kind == "integer" else f"a {kind}"


def _describe(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "text"}
    return f"{names.get(type(value), type(value).__name__)} {value!r}"
