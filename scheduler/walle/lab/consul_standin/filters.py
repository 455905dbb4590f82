"""Consul's ?filter= language (api-docs/features/filtering.mdx; go-bexpr underneath).

Grammar: `or` / `and` / `not` / parentheses over match expressions
`Sel == V`, `Sel != V`, `Sel is [not] empty`, `V [not] in Sel`, `Sel [not] contains V`,
`Sel [not] matches V`. A selector is dotted names (`Service.Meta.env`) or `Meta["key"]`; a
value is a "string", a `raw string`, a number or a bare identifier.

Consul checks every selector against the endpoint's data type before it runs the filter, so
each endpoint passes a schema (below): an unknown selector, an operator the field's type does
not take, or a value that does not convert to the field's type fails the whole request, with
Consul's status (500, the server-side "Failed to create boolean expression evaluator" error,
hashicorp/consul#7338). A valid Consul selector the stand-in does not model answers 400
naming it, never a silently ignored filter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from .errors import bad_request, rpc_error

# field types
STR, INT, BOOL, LIST = "string", "int", "bool", "list"
OPAQUE = "opaque"  # a Consul field the stand-in does not model (e.g. a check's Definition)


@dataclass(frozen=True)
class MapOf:
    """A map with arbitrary keys (Meta, TaggedAddresses) whose values have type `value`."""
    value: object


@dataclass(frozen=True)
class ListOf:
    """A list of structs (a health row's Checks): a selector through it matches any element."""
    item: dict


WEIGHTS = {"Passing": INT, "Warning": INT}
SERVICE_ADDRESS = {"Address": STR, "Port": INT}
# /v1/catalog/nodes (structs.Node)
NODE = {"ID": STR, "Node": STR, "Address": STR, "Datacenter": STR,
        "TaggedAddresses": MapOf(STR), "Meta": MapOf(STR)}
# /v1/agent/services, /v1/catalog/node/:node's Services, health rows' Service (NodeService;
# agent/service.mdx's selector table: Datacenter and Namespace are not selectors)
SERVICE = {"Kind": STR, "ID": STR, "Service": STR, "Tags": LIST, "Address": STR,
           "TaggedAddresses": MapOf(SERVICE_ADDRESS), "Meta": MapOf(STR), "Port": INT,
           "Weights": WEIGHTS, "EnableTagOverride": BOOL, "Proxy": OPAQUE, "Connect": OPAQUE}
# /v1/health/node, checks, state and /v1/agent/checks (HealthCheck; the selector tables of
# health.mdx and agent/check.mdx: Type and Definition are not selectors)
CHECK = {"Node": STR, "CheckID": STR, "Name": STR, "Status": STR, "Notes": STR, "Output": STR,
         "ServiceID": STR, "ServiceName": STR, "ServiceTags": LIST}
# /v1/catalog/service/:name and /v1/catalog/services (ServiceNode)
SERVICE_NODE = {"ID": STR, "Node": STR, "Address": STR, "Datacenter": STR,
                "TaggedAddresses": MapOf(STR), "NodeMeta": MapOf(STR), "ServiceKind": STR,
                "ServiceID": STR, "ServiceName": STR, "ServiceTags": LIST,
                "ServiceAddress": STR, "ServiceTaggedAddresses": MapOf(SERVICE_ADDRESS),
                "ServiceWeights": WEIGHTS, "ServiceMeta": MapOf(STR), "ServicePort": INT,
                "ServiceEnableTagOverride": BOOL, "ServiceProxy": OPAQUE,
                "ServiceConnect": OPAQUE}
# /v1/health/service/:name (CheckServiceNode)
HEALTH_ROW = {"Node": NODE, "Service": SERVICE, "Checks": ListOf(CHECK)}

# catalog.mdx "Filtering" tables: strings take Equal, In, Matches (and their negations); ints
# and bools Equal; lists and maps Is Empty and In (`contains` is `in` written the other way)
_OPS_BY_TYPE = {
    STR: {"==", "!=", "in", "contains", "matches"},
    INT: {"==", "!="}, BOOL: {"==", "!="},
    LIST: {"is empty", "in", "contains"},
}
_MAP_OPS = {"is empty", "in", "contains"}
_NEGATED = {"!=": "==", "is not empty": "is empty", "not in": "in",
            "not contains": "contains", "not matches": "matches"}

_TOKEN = re.compile(r"""\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*") | (?P<raw>`[^`]*`) |
    (?P<num>-?\d+(?:\.\d+)?(?![\w.])) | (?P<ident>[A-Za-z_][A-Za-z0-9_]*) |
    (?P<sym>==|!=|\(|\)|\.|\[|\]) )""", re.VERBOSE)
_KEYWORDS = {"and", "or", "not", "in", "contains", "matches", "is", "empty"}

Predicate = Callable[[object], bool]


class FilterSyntaxError(Exception):
    """A ?filter expression Consul's grammar does not accept (Consul answers 500)."""


def _invalid(message: str) -> Exception:
    return rpc_error(f"Failed to create boolean expression evaluator: {message}")


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        if not expr[pos:].strip():
            break
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise FilterSyntaxError(f"unexpected {expr[pos:].strip()[:20]!r} at {pos + 1}")
        kind = m.lastgroup
        text = m.group(kind)
        if kind == "ident" and text in _KEYWORDS:
            kind = "kw"
        out.append((kind, text))
        pos = m.end()
    return out


def _unquote(kind: str, text: str) -> str:
    """Backticks are raw; double quotes take escapes (\\", \\\\, \\n, \\t, \\uXXXX)."""
    if kind == "raw":
        return text[1:-1]
    if kind != "str":
        return text
    try:
        return json.loads(text)
    except ValueError:
        raise FilterSyntaxError(f"invalid escape in the string {text}") from None


class _Parser:
    def __init__(self, expr: str, schema: dict):
        self.toks = _tokens(expr)
        self.i = 0
        self.schema = schema

    def peek(self, offset: int = 0) -> tuple[str, str]:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else ("end", "")

    def take(self, kind: str, text: str | None = None) -> str:
        k, t = self.peek()
        if k != kind or (text is not None and t != text):
            raise FilterSyntaxError(f"expected {text or kind}, found {t or 'end of input'!r}")
        self.i += 1
        return t

    def at_kw(self, *words: str) -> bool:
        return all(self.peek(n) == ("kw", w) for n, w in enumerate(words))

    def parse(self) -> Predicate:
        if not self.toks:
            raise FilterSyntaxError("empty expression")
        pred = self.or_expr()
        if self.peek()[0] != "end":
            raise FilterSyntaxError(f"unexpected {self.peek()[1]!r}")
        return pred

    def or_expr(self) -> Predicate:
        return self.joined("or", self.and_expr, any)

    def and_expr(self) -> Predicate:
        return self.joined("and", self.not_expr, all)

    def joined(self, word: str, operand: Callable[[], Predicate],
               combine: Callable[[object], bool]) -> Predicate:
        """operand (word operand)*: `and` binds tighter than `or` by the call order."""
        parts = [operand()]
        while self.at_kw(word):
            self.i += 1
            parts.append(operand())
        return parts[0] if len(parts) == 1 else (lambda o: combine(p(o) for p in parts))

    def not_expr(self) -> Predicate:
        if self.at_kw("not"):
            self.i += 1
            inner = self.not_expr()
            return lambda o: not inner(o)
        if self.peek() == ("sym", "("):
            self.i += 1
            inner = self.or_expr()
            self.take("sym", ")")
            return inner
        return self.match()

    def selector(self) -> list[str]:
        path = [self.take("ident")]
        while self.peek() in (("sym", "."), ("sym", "[")):
            if self.take("sym") == ".":
                path.append(self.take("ident"))
            else:
                kind, text = self.peek()
                if kind not in ("str", "raw"):
                    raise FilterSyntaxError('expected a quoted map key after "["')
                self.i += 1
                path.append(_unquote(kind, text))
                self.take("sym", "]")
        return path

    def value(self) -> str:
        kind, text = self.peek()
        if kind not in ("str", "raw", "num", "ident"):
            raise FilterSyntaxError(f"expected a value, found {text or 'end of input'!r}")
        self.i += 1
        return _unquote(kind, text)

    def match(self) -> Predicate:
        kind, _ = self.peek()
        bare_value = kind == "ident" and (self.peek(1) == ("kw", "in") or (
            self.peek(1) == ("kw", "not") and self.peek(2) == ("kw", "in")))
        if kind in ("str", "raw", "num") or bare_value:
            value = self.value()
            negate = self.at_kw("not")
            self.i += 1 if negate else 0
            self.take("kw", "in")
            return self.build(self.selector(), "not in" if negate else "in", value)
        path = self.selector()
        if self.peek() in (("sym", "=="), ("sym", "!=")):
            return self.build(path, self.take("sym"), self.value())
        if self.at_kw("is", "empty"):
            self.i += 2
            return self.build(path, "is empty", None)
        if self.at_kw("is", "not", "empty"):
            self.i += 3
            return self.build(path, "is not empty", None)
        negate = self.at_kw("not")
        self.i += 1 if negate else 0
        if self.at_kw("contains") or self.at_kw("matches"):
            op = self.take("kw")
            return self.build(path, f"not {op}" if negate else op, self.value())
        raise FilterSyntaxError(f"expected an operator after {'.'.join(path)!r}, found "
                                f"{self.peek()[1] or 'end of input'!r}")

    def build(self, path: list[str], op: str, value: str | None) -> Predicate:
        positive = _NEGATED.get(op, op)
        field_type, getter = _resolve(self.schema, path)
        test = _operation(field_type, positive, value, ".".join(path))
        if op != positive:
            return lambda o: not getter(o, test)
        return lambda o: getter(o, test)


def _resolve(schema: dict, path: list[str]):
    """The type at `path` and a walker (obj, test) -> bool that applies test to the value
    there. A missing map key fails the positive test (so the negated forms hold, as in
    Consul); through a list of structs the test holds when it holds for any element."""
    name = ".".join(path)
    node: object = schema
    steps: list[tuple[str, str]] = []  # ("field" | "key" | "each", part)
    for part in path:
        if node == OPAQUE:
            break
        if isinstance(node, MapOf):
            steps.append(("key", part))
            node = node.value
            continue
        fields = node.item if isinstance(node, ListOf) else node
        if not isinstance(fields, dict) or part not in fields:
            raise _invalid(f'Selector "{name}" is not valid')
        steps.append(("each" if isinstance(node, ListOf) else "field", part))
        node = fields[part]
    if node == OPAQUE:
        raise bad_request(f'filter: selector "{name}" is valid in Consul but the stand-in '
                          "does not model that field")

    def walk(obj: object, test: Callable[[object], bool], n: int = 0) -> bool:
        if n == len(steps):
            return test(obj)
        kind, part = steps[n]
        if kind == "each":
            items = obj if isinstance(obj, list) else []
            return any(walk(item.get(part) if isinstance(item, dict) else None, test, n + 1)
                       for item in items)
        if not isinstance(obj, dict):
            return False if kind == "key" else walk(None, test, n + 1)
        if kind == "key" and part not in obj:
            return False
        return walk(obj.get(part), test, n + 1)
    return node, walk


def _operation(field_type: object, op: str, value: str | None, name: str) -> Callable:
    if isinstance(field_type, MapOf):
        allowed = _MAP_OPS
    elif isinstance(field_type, ListOf):  # health.mdx: `Checks` takes Is Empty only
        allowed = {"is empty"}
    elif isinstance(field_type, dict):
        raise _invalid(f'Selector "{name}" is not valid: it names a structure, not a value')
    else:
        allowed = _OPS_BY_TYPE[field_type]
    if op not in allowed:
        raise _invalid(f'Invalid match operator "{op}" for selector "{name}"')
    if op == "is empty":
        return lambda v: not v
    if op == "matches":
        try:
            pattern = re.compile(value or "")
        except re.error as exc:
            raise _invalid(f'Invalid regular expression "{value}": {exc}') from exc
        return lambda v: pattern.search(v or "") is not None
    if op in ("in", "contains"):
        if field_type == STR:
            return lambda v: (value or "") in (v or "")
        return lambda v: value in (v or ())
    wanted = _convert(field_type, value or "", name)
    if field_type == STR:
        return lambda v: (v or "") == wanted
    return lambda v: (v if v is not None else _ZERO[field_type]) == wanted


_ZERO = {INT: 0, BOOL: False}


def _convert(field_type: str, value: str, name: str) -> object:
    if field_type == INT:
        try:
            return int(value)
        except ValueError:
            raise _invalid(f'Failed to convert value "{value}" to an int for "{name}"') from None
    if field_type == BOOL:
        if value.lower() not in ("true", "false", "1", "0", "t", "f"):
            raise _invalid(f'Failed to convert value "{value}" to a bool for "{name}"')
        return value.lower() in ("true", "1", "t")
    return value


def compile_filter(expr: str | None, schema: dict) -> Callable[[object], bool]:
    """A predicate for ?filter=expr on objects shaped like `schema`; no filter keeps all."""
    if expr is None or expr == "":
        return lambda obj: True
    try:
        return _Parser(expr, schema).parse()
    except FilterSyntaxError as exc:
        raise _invalid(f"{exc} in {expr!r}") from None
