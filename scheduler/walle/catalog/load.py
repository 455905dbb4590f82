"""Reading the catalog folder: `<dir>/<name>/<version>/package.yml`, `templates/`, `files/`.

`parse_package` is pure (data and file texts in, a Package out, every field problem listed);
`load_catalog` is the only function here that reads the disk.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from walle.catalog.model import (
    PARAM_TYPES,
    Catalog,
    CatalogError,
    Dependency,
    Package,
    Parameter,
    parse_range,
    parse_version,
)
from walle.catalog.values import check_value
from walle.jobspec.encoding import StrictLoader
from walle.jobspec.grammar import DNS_LABEL

PACKAGE_FILE = "package.yml"
PACKAGE_KEYS = ("name", "version", "description", "parameters", "dependencies", "templates")
PARAM_KEYS = ("type", "default", "description", "allowed", "min", "max")
PARAM_NAME = re.compile(r"[a-z][a-z0-9_]*")  # usable as a Jinja2 variable name
MAX_NAME = 40
MAX_FILE_BYTES = 64 * 1024
DEFAULT_CATALOG = Path(__file__).resolve().parents[3] / "catalog"


def catalog_dir(option: str | None = None) -> Path:
    """--catalog DIR, else $WALLE_CATALOG, else the repository's catalog/."""
    return Path(option or os.environ.get("WALLE_CATALOG") or DEFAULT_CATALOG)


def load_catalog(root: str | Path) -> Catalog:
    root = Path(root)
    if not root.is_dir():
        raise CatalogError(f"catalog folder {str(root)!r} does not exist (set --catalog or "
                           f"WALLE_CATALOG)")
    packages: dict[str, dict] = {}
    broken: list[str] = []
    for package_file in sorted(root.glob(f"*/*/{PACKAGE_FILE}")):
        try:
            pkg = read_package(package_file.parent)
        except CatalogError as err:
            broken.extend(err.problems)
            continue
        packages.setdefault(pkg.name, {})[pkg.version] = pkg
    return Catalog(packages, tuple(broken))


def read_package(folder: Path) -> Package:
    source = str(folder / PACKAGE_FILE)
    text = _read_text(folder / PACKAGE_FILE, source)
    try:
        data = yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from exc
    templates = {p.name: _read_text(p, source) for p in sorted((folder / "templates").glob("*"))
                 if p.is_file()}
    files = {p.name: _read_text(p, source) for p in sorted((folder / "files").glob("*"))
             if p.is_file()}
    pkg = parse_package(data, templates, files, source)
    expected = (folder.parent.name, folder.name)
    if (pkg.name, str(pkg.version)) != expected:
        raise CatalogError(f"{source}: declares {pkg.name} {pkg.version} but lies in "
                           f"{expected[0]}/{expected[1]}/: the folders must be <name>/<version>")
    return pkg


def _read_text(path: Path, source: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"{source}: cannot read {path.name}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_FILE_BYTES:
        raise CatalogError(f"{source}: {path.name} is over {MAX_FILE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{source}: {path.name} is not UTF-8 text") from exc


# ----- the package.yml document ------------------------------------------------------------
def parse_package(data: object, templates: Mapping[str, str], files: Mapping[str, str],
                  source: str = "<package>") -> Package:
    """Validate package.yml data; all problems at once, each `<source>: <field>: <fix>`."""
    problems: list[str] = []

    def bad(path: str, message: str) -> None:
        problems.append(f"{source}: {path}: {message}")

    if not isinstance(data, dict):
        raise CatalogError(f"{source}: expected a mapping with {', '.join(PACKAGE_KEYS)}")
    _unknown_keys(data, PACKAGE_KEYS, "", bad)
    name = data.get("name")
    if not isinstance(name, str) or not _is_name(name):
        bad("name", f"a package name is a DNS label ([a-z][a-z0-9-]*, at most {MAX_NAME} "
                    f"characters), got {name!r}")
    version = _field(lambda: parse_version(data.get("version"), "version"), "version", bad)
    description = data.get("description", "")
    if not isinstance(description, str) or not description.strip():
        bad("description", "a one-line text saying what the package runs is required")
    params = tuple(p for p in (_parameter(k, v, bad) for k, v in
                               _mapping(data.get("parameters"), "parameters", bad).items()) if p)
    deps = []
    for dep_name, versions in _mapping(data.get("dependencies"), "dependencies", bad).items():
        path = f"dependencies.{dep_name}"
        if not isinstance(dep_name, str) or not _is_name(dep_name):
            bad(path, "a dependency is named by its package name")
            continue
        if dep_name == name:
            bad(path, "a package cannot depend on itself")
        rng = _field(lambda v=versions, p=path: parse_range(v, p), path, bad)
        if rng is not None:
            deps.append(Dependency(dep_name, rng, versions))
    chosen = _templates(data.get("templates"), templates, bad)
    if problems or version is None:
        raise CatalogError(problems)
    return Package(name=name, version=version, description=description.strip(),
                   parameters=params, dependencies=tuple(deps), templates=chosen,
                   files=dict(files), source=source)


def _parameter(name: object, spec: object, bad) -> Parameter | None:
    path = f"parameters.{name}"
    if not isinstance(name, str) or not PARAM_NAME.fullmatch(name):
        bad(path, "parameter names are [a-z][a-z0-9_]* (they are template variables)")
        return None
    if not isinstance(spec, dict):
        bad(path, "expected a mapping with type and default")
        return None
    _unknown_keys(spec, PARAM_KEYS, path + ".", bad)
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        bad(f"{path}.type", f"one of {', '.join(PARAM_TYPES)}, got {kind!r}")
        return None
    limits = {}
    for key in ("min", "max"):
        value = spec.get(key)
        if value is None:
            continue
        if kind not in ("integer", "number"):
            bad(f"{path}.{key}", f"only integer and number parameters have a {key}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            bad(f"{path}.{key}", f"expected a number, got {value!r}")
        else:
            limits[key] = value
    allowed = spec.get("allowed") or []
    if not isinstance(allowed, list):
        bad(f"{path}.allowed", "expected a list of the values allowed")
        allowed = []
    param = Parameter(name=name, type=kind, default=spec.get("default"),
                      description=str(spec.get("description") or ""), allowed=tuple(allowed),
                      **limits)
    # the defaults and allowed values must pass the parameter's own checks
    for i, value in enumerate(allowed):
        _field(lambda v=value: check_value(param, v, from_text=False, check_allowed=False),
               f"{path}.allowed[{i}]", bad)
    if param.default is not None:
        _field(lambda: check_value(param, param.default, from_text=False),
               f"{path}.default", bad)
    return param


def _templates(listed: object, texts: Mapping[str, str], bad) -> dict[str, str]:
    if listed is None:
        names = sorted(n for n in texts if n.endswith(".j2"))
    elif isinstance(listed, list) and all(isinstance(n, str) for n in listed):
        names = listed
    else:
        bad("templates", "expected a list of file names under templates/")
        return {}
    for n in names:
        if n not in texts:
            bad("templates", f"templates/{n} does not exist")
    if not names:
        bad("templates", "a package needs at least one template under templates/ (*.j2)")
    return {n: texts[n] for n in names if n in texts}


def _mapping(value: object, path: str, bad) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        bad(path, "expected a mapping")
        return {}
    return value


def _unknown_keys(data: dict, allowed: tuple[str, ...], prefix: str, bad) -> None:
    for key in data:
        if key not in allowed:
            bad(f"{prefix}{key}", f"unknown key; allowed: {', '.join(allowed)}")


def _field(fn, path: str, bad) -> Any:
    try:
        return fn()
    except CatalogError as err:
        for line in err.problems:
            bad(path, line.split(": ", 1)[-1] if line.startswith(path) else line)
        return None


def _is_name(name: str) -> bool:
    return (bool(DNS_LABEL.fullmatch(name)) and len(name) <= MAX_NAME
            and not name.endswith("-") and "--" not in name)
