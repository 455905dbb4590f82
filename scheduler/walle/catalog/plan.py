"""Deciding what an install, upgrade or uninstall does. Pure: catalog and installed records
in, a plan out; the CLI writes it. Every spec of a plan is rendered and validated before the
plan exists, so a bad package, value or template writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from walle.catalog.model import Catalog, CatalogError, Dependency, Installed, Package
from walle.catalog.render import ServiceRef, render_package, service_of
from walle.catalog.values import resolve_values
from walle.jobspec import JobSpec


@dataclass(frozen=True)
class Step:
    """One package to write: its jobs, then its record."""

    package: Package
    specs: tuple[JobSpec, ...]
    record: Installed
    replaces: Installed | None = None  # the record this upgrade replaces

    @property
    def stale_jobs(self) -> tuple[str, ...]:
        """Jobs of the replaced version that the new one no longer has: stopped."""
        keep = {s.name for s in self.specs}
        return tuple(j for j in (self.replaces.jobs if self.replaces else ()) if j not in keep)


def resolve(catalog: Catalog, root: Package, installed: Mapping[str, Installed]
            ) -> list[Package]:
    """The packages to write, dependencies before dependents, `root` last. A dependency that
    is installed at a version in range is used as it is; one installed outside the range is an
    error (upgrade it first), as is a cycle or a range no catalog version satisfies."""
    order: list[Package] = []
    chosen: dict[str, Package] = {root.name: root}

    def visit(pkg: Package, path: list[Package]) -> None:
        for dep in pkg.dependencies:
            if dep.name in (p.name for p in path):
                cycle = " -> ".join([p.ref for p in path] + [dep.name])
                raise CatalogError(f"dependency cycle: {cycle}")
            if dep.name in chosen:
                _check_chosen(chosen[dep.name], dep, pkg)
                continue
            have = installed.get(dep.name)
            if have is not None:
                if Version(have.version) not in dep.versions:
                    raise CatalogError(
                        f"{pkg.ref} needs {dep.name} {dep.wanted}, but {dep.name} "
                        f"{have.version} is installed: upgrade it first (walle package upgrade "
                        f"{dep.name} --version V)")
                continue
            candidate = pick(catalog, dep, pkg)
            chosen[dep.name] = candidate
            visit(candidate, path + [candidate])
            order.append(candidate)

    visit(root, [root])
    return order + [root]


def pick(catalog: Catalog, dep: Dependency, needed_by: Package) -> Package:
    """The newest catalog version of `dep` inside its range."""
    have = catalog.versions(dep.name)
    if not have:
        raise CatalogError(f"{needed_by.ref} depends on unknown package {dep.name!r}")
    fits = list(dep.versions.filter(have, prereleases=True))
    if not fits:
        listed = ", ".join(str(v) for v in have)
        raise CatalogError(f"no version satisfies {dep.wanted} of {dep.name} (have {listed}); "
                           f"needed by {needed_by.ref}")
    return catalog.packages[dep.name][max(fits)]


def _check_chosen(pkg: Package, dep: Dependency, needed_by: Package) -> None:
    if pkg.version not in dep.versions:
        raise CatalogError(f"{needed_by.ref} needs {dep.name} {dep.wanted}, but this install "
                           f"already chose {pkg.ref}")


def plan_install(catalog: Catalog, root: Package, installed: Mapping[str, Installed],
                 existing_jobs: set[str], *, file_values: Mapping[str, Any] | None = None,
                 sets: Mapping[str, str] | None = None, upgrade: bool = False) -> list[Step]:
    """Steps for installing (or upgrading) `root` with its missing dependencies."""
    current = installed.get(root.name)
    if current is not None and not upgrade:
        raise CatalogError(f"{root.name} {current.version} is already installed; use "
                           f"`walle package upgrade {root.name}` to change it")
    if current is None and upgrade:
        raise CatalogError(f"{root.name} is not installed; use `walle package install`")
    if upgrade:
        _check_dependents_accept(root, installed)
    services = {name: ServiceRef(rec.service["service"], rec.service.get("port"))
                for name, rec in installed.items() if rec.service}
    steps: list[Step] = []
    for pkg in resolve(catalog, root, installed):
        is_root = pkg is root
        values = resolve_values(pkg, kept=current.values if is_root and current else None,
                                file_values=file_values if is_root else None,
                                sets=sets if is_root else None)
        deps = {}
        for d in pkg.dependencies:
            if d.name in services:
                deps[d.name] = services[d.name]
        specs = render_package(pkg, values, deps)
        service = service_of(specs)
        if service is not None:
            services[pkg.name] = service
        record = Installed(name=pkg.name, version=str(pkg.version), values=values,
                           jobs=tuple(s.name for s in specs),
                           dependencies={d.name: d.wanted for d in pkg.dependencies},
                           service=service.to_json() if service else None,
                           modify_index=installed[pkg.name].modify_index
                           if pkg.name in installed else 0)
        steps.append(Step(pkg, tuple(specs), record, installed.get(pkg.name)))
    _check_job_owners(steps, installed, existing_jobs)
    return steps


def _check_dependents_accept(root: Package, installed: Mapping[str, Installed]) -> None:
    for rec in installed.values():
        wanted = rec.dependencies.get(root.name)
        if wanted is not None and root.version not in SpecifierSet(wanted):
            raise CatalogError(f"{rec.name} {rec.version} needs {root.name} {wanted}, so "
                               f"{root.ref} cannot replace it; upgrade {rec.name} first")


def _check_job_owners(steps: list[Step], installed: Mapping[str, Installed],
                      existing_jobs: set[str]) -> None:
    """A package writes only jobs it owns: never one of another package, never a job someone
    submitted by hand (it would be overwritten), never one job from two packages."""
    owner = {job: rec.name for rec in installed.values() for job in rec.jobs}
    problems = []
    for step in steps:
        for spec in step.specs:
            have = owner.get(spec.name)
            if have is not None and have != step.package.name:
                problems.append(f"{step.package.ref}: job {spec.name!r} belongs to package "
                                f"{have}; set another name or uninstall {have}")
            elif have is None and spec.name in existing_jobs:
                problems.append(f"{step.package.ref}: job {spec.name!r} already runs and was "
                                f"not installed by a package; stop it or set another name")
            owner[spec.name] = step.package.name
    if problems:
        raise CatalogError(problems)


def plan_uninstall(installed: Mapping[str, Installed], name: str, cascade: bool
                   ) -> list[Installed]:
    """Records to remove, dependents first. Without `cascade`, a remaining dependent is an
    error naming it."""
    if name not in installed:
        raise CatalogError(f"package {name!r} is not installed (`walle package installed` "
                           f"lists what is)")
    order: list[Installed] = []

    def visit(pkg_name: str) -> None:
        if any(r.name == pkg_name for r in order):
            return
        dependents = sorted(r.name for r in installed.values() if pkg_name in r.dependencies)
        if dependents and not cascade:
            raise CatalogError(f"{pkg_name} is needed by {', '.join(dependents)}: uninstall "
                               f"{'them' if len(dependents) > 1 else 'it'} first, or use "
                               f"--cascade to remove them too")
        for dependent in dependents:
            visit(dependent)
        order.append(installed[pkg_name])

    visit(name)
    return order
