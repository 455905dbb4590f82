"""`walle package`: install services from the catalog (docs/catalog.md).

list, search and info read only the catalog folder; install, upgrade, uninstall and installed
also talk to Consul. Every spec of an install is rendered and validated before the first
write; bad input (unknown package or version, a wrong value, a cycle, a range nothing
satisfies, a template that renders no valid job) exits 2 and writes nothing.
"""

from __future__ import annotations

import sys

import yaml

from walle.catalog import (
    Catalog,
    CatalogError,
    Installed,
    Package,
    Step,
    catalog_dir,
    load_catalog,
    parse_sets,
    plan_install,
    plan_uninstall,
)
from walle.cli.common import (
    ActionError,
    add_consul_args,
    cluster_command,
    connect,
    print_json,
    progress,
)
from walle.cli.main import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_json_arg
from walle.cli.output import print_table
from walle.jobspec.encoding import StrictLoader
from walle.jobspec.grammar import MAX_SPEC_BYTES
from walle.service.jobs import CAS_ATTEMPTS, submit


def register(subparsers) -> None:
    package = subparsers.add_parser("package", help="install services from the package catalog")
    sub = package.add_subparsers(dest="package_command", metavar="ACTION", required=True)

    def action(name: str, help_text: str, func, cluster: bool):
        parser = sub.add_parser(name, help=help_text)
        parser.add_argument("--catalog", metavar="DIR",
                            help="catalog folder (default: $WALLE_CATALOG or the repository's "
                                 "catalog/)")
        if cluster:
            add_consul_args(parser)
        else:
            add_json_arg(parser)
        parser.set_defaults(func=func)
        return parser

    action("list", "every package with its newest version", cmd_list, cluster=False)
    search = action("search", "packages whose name or description holds TEXT", cmd_search,
                    cluster=False)
    search.add_argument("text")
    info = action("info", "a package's versions, parameters and dependencies", cmd_info,
                  cluster=False)
    info.add_argument("name")
    info.add_argument("--version")
    for name, help_text, func in (
            ("install", "install a package and the dependencies it lacks", cmd_install),
            ("upgrade", "move an installed package to another version or values", cmd_upgrade)):
        parser = action(name, help_text, func, cluster=True)
        parser.add_argument("name")
        parser.add_argument("--version", help="default: the newest in the catalog")
        parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                            help="a parameter value (repeatable); read as the parameter's type")
        parser.add_argument("-f", "--values", metavar="FILE", help="YAML mapping of values")
    uninstall = action("uninstall", "stop a package's jobs and forget it", cmd_uninstall,
                       cluster=True)
    uninstall.add_argument("name")
    uninstall.add_argument("--cascade", action="store_true",
                           help="uninstall the packages that depend on it first")
    action("installed", "installed packages, their versions and values", cmd_installed,
           cluster=True)


# ----- catalog only ------------------------------------------------------------------------
def _catalog(args) -> Catalog:
    catalog = load_catalog(catalog_dir(args.catalog))
    for problem in catalog.broken:
        progress(f"walle package: skipped: {problem}")
    return catalog


def _bad_input(args, err: CatalogError, installing: bool = False) -> int:
    tail = "\nnothing was installed" if installing else ""
    print(f"walle package {args.package_command}: {err}{tail}", file=sys.stderr)
    return EXIT_USAGE


def _summary(pkg: Package) -> dict:
    return {"name": pkg.name, "version": str(pkg.version), "description": pkg.description}


def cmd_list(args) -> int:
    try:
        catalog = _catalog(args)
    except CatalogError as err:
        return _bad_input(args, err)
    rows = [{**_summary(catalog.latest(n)), "versions": ", ".join(map(str, catalog.versions(n)))}
            for n in sorted(catalog.packages)]
    _show(args, rows, ["name", "version", "versions", "description"])
    return EXIT_OK


def cmd_search(args) -> int:
    try:
        catalog = _catalog(args)
    except CatalogError as err:
        return _bad_input(args, err)
    text = args.text.lower()
    rows = [_summary(catalog.latest(n)) for n in sorted(catalog.packages)
            if text in n.lower() or text in catalog.latest(n).description.lower()]
    _show(args, rows, ["name", "version", "description"])
    return EXIT_OK


def cmd_info(args) -> int:
    try:
        catalog = _catalog(args)
        pkg = catalog.get(args.name, args.version)
    except CatalogError as err:
        return _bad_input(args, err)
    params = [{"parameter": p.name, "type": p.type, "default": p.default,
               "allowed": list(p.allowed) or None,
               "range": None if p.min is None and p.max is None else
               f"{'' if p.min is None else p.min}..{'' if p.max is None else p.max}",
               "description": p.description} for p in pkg.parameters]
    deps = {d.name: d.wanted for d in pkg.dependencies}
    if args.json:
        print_json({**_summary(pkg), "versions": [str(v) for v in catalog.versions(pkg.name)],
                    "parameters": params, "dependencies": deps,
                    "templates": list(pkg.templates)})
        return EXIT_OK
    print(f"{pkg.ref}: {pkg.description}")
    print(f"versions: {', '.join(map(str, catalog.versions(pkg.name)))}")
    print(f"depends on: {', '.join(f'{n} {r}' for n, r in deps.items()) or 'nothing'}\n")
    print_table(params, ["parameter", "type", "default", "allowed", "range", "description"])
    return EXIT_OK


def _show(args, rows: list[dict], columns: list[str]) -> None:
    if args.json:
        print_json(rows)
    else:
        print_table(rows, columns)


# ----- against the cluster -----------------------------------------------------------------
def installed_packages(store) -> dict[str, Installed]:
    return {name: Installed.from_json(name, body, index)
            for name, (body, index) in store.packages().items()}


def _read_values_file(path: str | None) -> dict:
    if not path:
        return {}
    try:
        with open(path, "rb") as stream:
            raw = stream.read(MAX_SPEC_BYTES + 1)
        if len(raw) > MAX_SPEC_BYTES:
            raise CatalogError(f"{path}: larger than {MAX_SPEC_BYTES} bytes")
        data = yaml.load(raw.decode("utf-8"), Loader=StrictLoader)  # noqa: S506 (SafeLoader)
    except OSError as err:
        raise CatalogError(f"{path}: cannot read: {err.strerror or err}") from err
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise CatalogError(f"{path}: not a YAML file: {' '.join(str(err).split())}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CatalogError(f"{path}: expected a mapping of parameter: value")
    return data


@cluster_command
def cmd_install(args) -> int:
    return _install(args, upgrade=False)


@cluster_command
def cmd_upgrade(args) -> int:
    return _install(args, upgrade=True)


def _install(args, upgrade: bool) -> int:
    try:
        catalog = _catalog(args)
        root = catalog.get(args.name, args.version)
        file_values = _read_values_file(args.values)
        sets = parse_sets(args.set)
    except CatalogError as err:
        return _bad_input(args, err, installing=True)
    _, store = connect(args)

    def report(step: Step) -> None:
        if not args.json:
            verb = "upgraded from " + step.replaces.version if step.replaces else "installed"
            print(f"{step.package.ref}: {verb} (jobs: {', '.join(step.record.jobs)})")

    try:
        done = install_package(store, catalog, root, file_values=file_values, sets=sets,
                               upgrade=upgrade, on_step=report)
    except CatalogError as err:
        return _bad_input(args, err, installing=True)
    except ActionError as err:
        print(f"walle package {args.package_command}: {err}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print_json({"packages": done})
    return EXIT_OK


def install_package(store, catalog: Catalog, root: Package, *, file_values: dict,
                    sets: dict, upgrade: bool, on_step=None) -> list[dict]:
    """Install (or upgrade) `root` and the dependencies it lacks: every spec is rendered and
    validated first (CatalogError: bad input, nothing written), then each package's jobs and
    record are written in dependency order (ActionError: a write lost its race midway; what
    was written is named). Returns what was done, one entry per package."""
    installed = installed_packages(store)
    _, jobs = store.jobs()
    steps = plan_install(catalog, root, installed, set(jobs), file_values=file_values,
                         sets=sets, upgrade=upgrade)
    done = []
    for step in steps:
        problem = _write_step(store, step)
        if problem:
            written = ", ".join(d["name"] for d in done) or "nothing"
            raise ActionError(f"{problem} (already written: {written}); run the command "
                              "again")
        done.append({"name": step.record.name, "version": step.record.version,
                     "jobs": list(step.record.jobs), "values": dict(step.record.values),
                     "action": "upgraded" if step.replaces else "installed"})
        if on_step:
            on_step(step)
    return done


def _write_step(store, step: Step) -> str | None:
    """The package's jobs (the scheduler rolls changed ones out, rolling back on failure),
    the jobs an upgrade dropped, then its record. Returns what went wrong, or None."""
    for spec in step.specs:
        if submit(store, spec) is None:
            return f"job {spec.name} kept changing under us"
    for job in step.stale_jobs:
        if not _stop_job(store, job):
            return f"job {job} kept changing under us"
    if not store.put_package(step.record.name, step.record.to_json(), step.record.modify_index):
        return f"the record of {step.record.name} changed meanwhile"
    return None


def _stop_job(store, name: str) -> bool:
    for _ in range(CAS_ATTEMPTS):
        current = store.job(name)
        if current is None or store.delete_job(name, current.modify_index):
            return True
    return False


@cluster_command
def cmd_uninstall(args) -> int:
    _, store = connect(args)
    try:
        order = plan_uninstall(installed_packages(store), args.name, args.cascade)
    except CatalogError as err:
        return _bad_input(args, err)
    removed = []
    for record in order:
        for job in record.jobs:
            if not _stop_job(store, job):
                print(f"walle package uninstall: job {job} kept changing; try again",
                      file=sys.stderr)
                return EXIT_FAILED
        if not store.delete_package(record.name, record.modify_index):
            print(f"walle package uninstall: the record of {record.name} changed meanwhile; "
                  f"try again", file=sys.stderr)
            return EXIT_FAILED
        removed.append({"name": record.name, "version": record.version,
                        "jobs": list(record.jobs)})
        if not args.json:
            print(f"{record.name} {record.version}: uninstalled (stopped: "
                  f"{', '.join(record.jobs) or 'nothing'})")
    if args.json:
        print_json({"uninstalled": removed})
    return EXIT_OK


@cluster_command
def cmd_installed(args) -> int:
    _, store = connect(args)
    try:
        records = installed_packages(store)
    except CatalogError as err:
        print(f"walle package installed: {err}", file=sys.stderr)
        return EXIT_FAILED
    rows = [{"name": r.name, **r.to_json()} for _, r in sorted(records.items())]
    if args.json:
        print_json(rows)
        return EXIT_OK
    print_table([{**row, "jobs": ", ".join(row["jobs"]),
                  "dependencies": ", ".join(f"{k} {v}" for k, v in row["dependencies"].items()),
                  "values": ", ".join(f"{k}={v}" for k, v in sorted(row["values"].items()))}
                 for row in rows], ["name", "version", "jobs", "dependencies", "values"])
    return EXIT_OK


