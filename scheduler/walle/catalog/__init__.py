"""The package catalog: versioned packages of job-spec templates with typed parameters and
dependencies (docs/catalog.md). Pure logic; the `walle package` command does the I/O."""

from walle.catalog.load import catalog_dir, load_catalog, parse_package, read_package
from walle.catalog.model import (
    Catalog,
    CatalogError,
    Dependency,
    Installed,
    Package,
    Parameter,
)
from walle.catalog.plan import Step, plan_install, plan_uninstall, resolve
from walle.catalog.render import ServiceRef, dependency_env, render_package, service_of
from walle.catalog.values import check_value, parse_sets, resolve_values

__all__ = [
    "Catalog", "CatalogError", "Dependency", "Installed", "Package", "Parameter",
    "ServiceRef", "Step", "catalog_dir", "check_value", "dependency_env", "load_catalog",
    "parse_package", "parse_sets", "plan_install", "plan_uninstall", "read_package",
    "render_package", "resolve", "resolve_values", "service_of",
]
