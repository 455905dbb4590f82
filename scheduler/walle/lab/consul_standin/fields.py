"""Request-body field access the way Consul decodes JSON: case-insensitive, snake_case too."""

from __future__ import annotations

from typing import Any


def _norm(name: str) -> str:
    return name.replace("_", "").lower()


def get(body: dict | None, name: str, default: Any = None) -> Any:
    if not body:
        return default
    if name in body:
        return body[name]
    wanted = _norm(name)
    for key, value in body.items():
        if _norm(key) == wanted:
            return value
    return default


def has(body: dict | None, name: str) -> bool:
    marker = object()
    return get(body, name, marker) is not marker


def as_dict(value: Any, field: str) -> dict:
    from .errors import bad_request

    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(f"{field}: expected a JSON object")
    return value
