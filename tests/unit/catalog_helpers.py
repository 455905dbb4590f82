"""Small in-memory packages for the catalog tests."""

from __future__ import annotations

from walle.catalog import Catalog, parse_package

SERVICE_TEMPLATE = """name: {{ package.name }}
kind: service
count: {{ count }}
resources: {cpu: 0.1, memory: 32M}
runtime:
  command: /usr/bin/python3
  args: ["-m", "http.server", {{ port }}]
  env: {GREETING: {{ greeting }}}
service: {name: {{ package.name }}, port: {{ port }}}
"""


def package(name: str, version: str = "1.0.0", deps: dict | None = None,
            template: str = SERVICE_TEMPLATE, params: dict | None = None, files=None):
    data = {"name": name, "version": version, "description": f"the {name} package",
            "parameters": params if params is not None else {
                "port": {"type": "integer", "default": 8080, "min": 1024, "max": 65535},
                "count": {"type": "integer", "default": 1, "min": 1, "max": 5},
                "greeting": {"type": "string", "default": "hi"}},
            "dependencies": deps or {}}
    return parse_package(data, {"job.yml.j2": template}, files or {}, f"{name}/{version}")


def catalog(*packages) -> Catalog:
    out: dict = {}
    for p in packages:
        out.setdefault(p.name, {})[p.version] = p
    return Catalog(out)
