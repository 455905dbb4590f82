"""Rendering a package's templates into validated job specs. Pure: data in, specs out.

Package parameters are data, never code. The templates (written by the package author) run in
Jinja2's SandboxedEnvironment with StrictUndefined, and every `{{ expression }}` is written as
a JSON scalar or list (JSON is YAML), so a value cannot add YAML keys or close a quote, and a
value containing `{{ }}` stays that text: Jinja2 never renders its own output again. Each
rendered document then goes through the real spec parser.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from jinja2 import (
    DictLoader,
    StrictUndefined,
    TemplateError,
    TemplateRuntimeError,
    TemplateSyntaxError,
    Undefined,
)
from jinja2.sandbox import SandboxedEnvironment

from walle.catalog.model import CatalogError, Package
from walle.jobspec import JobSpec, SpecError, parse_spec
from walle.jobspec.encoding import StrictLoader


@dataclass(frozen=True)
class ServiceRef:
    """How a dependent reaches a package: its Consul service name and port."""

    service: str
    port: int | None = None

    @property
    def address(self) -> str:
        return f"{self.service}.service.consul"

    def to_json(self) -> dict[str, Any]:
        return {"service": self.service, "port": self.port}


def dependency_env(deps: Mapping[str, ServiceRef]) -> dict[str, str]:
    """WALLE_DEP_<NAME>_SERVICE (and _PORT) for each dependency that offers a service."""
    env = {}
    for name, ref in sorted(deps.items()):
        stem = "WALLE_DEP_" + name.upper().replace("-", "_")
        env[f"{stem}_SERVICE"] = ref.address
        if ref.port is not None:
            env[f"{stem}_PORT"] = str(ref.port)
    return env


def render_package(pkg: Package, values: Mapping[str, Any],
                   deps: Mapping[str, ServiceRef]) -> list[JobSpec]:
    """Every template of `pkg`, rendered and validated, in template order. Any problem (a
    template error, output that is not a job spec) raises CatalogError naming the template."""
    env = _environment(pkg)
    context = {**values, "package": {"name": pkg.name, "version": str(pkg.version)},
               "deps": {n: {**r.to_json(), "address": r.address} for n, r in deps.items()}}
    wiring = dependency_env(deps)
    specs, problems, names = [], [], set()
    for template_name in pkg.templates:
        where = f"{pkg.ref}: templates/{template_name}"
        try:
            text = env.get_template(template_name).render(context)
            data = yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
        except TemplateSyntaxError as err:
            problems.append(f"{where}: line {err.lineno}: {err.message}")
            continue
        except (TemplateError, TypeError, ArithmeticError) as err:  # the author's mistake
            problems.append(f"{where}: {err}")
            continue
        except yaml.YAMLError as err:
            problems.append(f"{where}: renders to invalid YAML: {' '.join(str(err).split())}")
            continue
        _wire(data, wiring)
        try:
            spec = parse_spec(data, source=where)
        except SpecError as err:
            problems.extend(str(err).splitlines())
            continue
        if spec.name in names:
            problems.append(f"{where}: job name {spec.name!r} is rendered twice")
        names.add(spec.name)
        specs.append(spec)
    if problems:
        raise CatalogError(problems)
    return specs


def service_of(specs: list[JobSpec]) -> ServiceRef | None:
    """The package's service as dependents see it: its first job that registers one."""
    for spec in specs:
        if spec.service is not None:
            return ServiceRef(spec.service.name, spec.service.port)
    return None


def _wire(data: object, wiring: Mapping[str, str]) -> None:
    """Add the dependency variables to the job's environment (the template's own wins)."""
    if not wiring or not isinstance(data, dict) or not isinstance(data.get("runtime"), dict):
        return
    env = data["runtime"].get("env")
    if env is None:
        env = data["runtime"]["env"] = {}
    if isinstance(env, dict):
        for key, value in wiring.items():
            env.setdefault(key, value)


def _environment(pkg: Package) -> SandboxedEnvironment:
    env = SandboxedEnvironment(loader=DictLoader(dict(pkg.templates)), undefined=StrictUndefined,
                               autoescape=False, finalize=yaml_value, keep_trailing_newline=True)
    env.globals["python_inline"] = lambda name: python_inline(pkg, name)
    return env


def yaml_value(value: Any) -> str:
    """Every `{{ }}` output as JSON: a YAML flow scalar, list or mapping that cannot be
    anything else, whatever text it holds."""
    if isinstance(value, Undefined):
        str(value)  # StrictUndefined: raises UndefinedError naming the variable
    if isinstance(value, (str, int, float, bool, list, dict, tuple)) or value is None:
        return "".join(map(_yaml_char, json.dumps(value, ensure_ascii=False)))
    raise TemplateError(f"cannot write a {type(value).__name__} into a spec")


def _yaml_char(char: str) -> str:
    """Characters YAML would read as line breaks or refuse (U+2028, NEL, DEL...) written as
    escapes, so the value arrives intact and the spec parser judges it."""
    if char.isprintable():
        return char
    return f"\\u{ord(char):04x}" if ord(char) < 0x10000 else f"\\U{ord(char):08x}"


def python_inline(pkg: Package, name: str) -> list[str]:
    """argv (after /usr/bin/python3) that runs a script shipped in the package's files/:
    specs are one-line strings, so the script travels base64-encoded."""
    if name not in pkg.files:
        raise TemplateRuntimeError(f"python_inline({name!r}): no files/{name} in the package")
    encoded = base64.b64encode(pkg.files[name].encode()).decode()
    return ["-c", f"import base64;exec(compile(base64.b64decode('{encoded}'),'{name}','exec'))"]
