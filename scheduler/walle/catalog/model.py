"""What a catalog package is: its parameters, dependencies and templates, as plain data.

A package is read from `catalog/<name>/<version>/package.yml` plus its `templates/` (Jinja2,
rendering one job spec each) and `files/` (scripts the templates ship inline). Everything here
is immutable data; reading files is load.py's job, deciding what to install plan.py's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

PARAM_TYPES = ("string", "integer", "number", "boolean")


class CatalogError(ValueError):
    """Bad input about packages: one line per problem, each naming where and the fix."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(self.problems)


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str  # one of PARAM_TYPES
    default: Any = None  # None: the parameter is required
    description: str = ""
    allowed: tuple[Any, ...] = ()  # empty: any value of the type
    min: float | None = None  # integer and number: the smallest allowed value
    max: float | None = None

    @property
    def required(self) -> bool:
        return self.default is None


@dataclass(frozen=True)
class Dependency:
    name: str
    versions: SpecifierSet  # e.g. >=1.0,<2
    text: str = ""  # the range as the author wrote it (SpecifierSet sorts its clauses)

    @property
    def wanted(self) -> str:
        return self.text or str(self.versions)


@dataclass(frozen=True)
class Package:
    name: str
    version: Version
    description: str
    parameters: tuple[Parameter, ...] = ()
    dependencies: tuple[Dependency, ...] = ()
    templates: Mapping[str, str] = field(default_factory=dict)  # template name -> Jinja2 text
    files: Mapping[str, str] = field(default_factory=dict)  # file name -> text
    source: str = "<package>"  # where it was read from, for error messages

    @property
    def ref(self) -> str:
        return f"{self.name} {self.version}"

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)


@dataclass(frozen=True)
class Catalog:
    """Every version of every package, plus the problems of packages that could not be read
    (reported, and refused when asked for, but they do not hide the good ones)."""

    packages: Mapping[str, Mapping[Version, Package]]
    broken: tuple[str, ...] = ()

    def versions(self, name: str) -> list[Version]:
        return sorted(self.packages.get(name, {}))

    def latest(self, name: str) -> Package | None:
        versions = self.versions(name)
        return self.packages[name][versions[-1]] if versions else None

    def get(self, name: str, version: str | None = None) -> Package:
        """One package; the newest version when none is asked for. Unknown: CatalogError."""
        if name not in self.packages:
            broken = [b for b in self.broken if f"/{name}/" in b]
            hint = (" (it is in the catalog but cannot be read:\n" + "\n".join(broken) + ")"
                    if broken else "; `walle package list` shows the packages there are")
            raise CatalogError(f"unknown package {name!r}{hint}")
        if version is None:
            return self.latest(name)
        wanted = parse_version(version, f"version of {name}")
        if wanted not in self.packages[name]:
            have = ", ".join(str(v) for v in self.versions(name))
            raise CatalogError(f"package {name} has no version {version} (have {have})")
        return self.packages[name][wanted]


def parse_version(text: object, what: str) -> Version:
    try:
        return Version(str(text))
    except InvalidVersion:
        raise CatalogError(f"{what}: {text!r} is not a version such as 1.2.0") from None


def parse_range(text: object, what: str) -> SpecifierSet:
    if not isinstance(text, str):
        raise CatalogError(f"{what}: expected a version range such as '>=1.0,<2', "
                           f"got {type(text).__name__}")
    try:
        return SpecifierSet(text)
    except InvalidSpecifier:
        raise CatalogError(f"{what}: {text!r} is not a version range such as '>=1.0,<2' "
                           f"(comma-separated ==, !=, >=, <=, >, <, ~=)") from None


@dataclass(frozen=True)
class Installed:
    """What `walle package install` recorded for one package (Consul KV
    walle/packages/<name>): the version, the values it was rendered with, the jobs it wrote,
    the ranges it needs of its dependencies, and the service dependents are wired to."""

    name: str
    version: str
    values: Mapping[str, Any] = field(default_factory=dict)
    jobs: tuple[str, ...] = ()
    dependencies: Mapping[str, str] = field(default_factory=dict)  # name -> version range
    service: Mapping[str, Any] | None = None  # {"service": name, "port": port or None}
    modify_index: int = 0  # 0: not stored yet

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "values": dict(self.values), "jobs": list(self.jobs),
                "dependencies": dict(self.dependencies), "service": self.service}

    @classmethod
    def from_json(cls, name: str, body: Mapping[str, Any], modify_index: int) -> Installed:
        """A stored record; one that is not shaped like to_json() is a CatalogError."""
        shapes = {"version": str, "values": dict, "jobs": list, "dependencies": dict}
        for key, kind in shapes.items():
            if not isinstance(body.get(key), kind):
                raise CatalogError(f"package record {name}: field {key!r} is missing or not "
                                   f"a {kind.__name__}")
        service = body.get("service")
        if service is not None and not (isinstance(service, dict)
                                        and isinstance(service.get("service"), str)):
            raise CatalogError(f"package record {name}: field 'service' is malformed")
        return cls(name=name, version=body["version"], values=body["values"],
                   jobs=tuple(str(j) for j in body["jobs"]),
                   dependencies={str(k): str(v) for k, v in body["dependencies"].items()},
                   service=service, modify_index=modify_index)
