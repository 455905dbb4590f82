"""A spec in and out of text: reading YAML or JSON files strictly (bounded size, no
duplicate keys, no surprising YAML types) and the spec back in its input form."""


from __future__ import annotations

from pathlib import Path

import yaml

from walle.jobspec.grammar import MAX_SPEC_BYTES, ROOT, grammar
from walle.jobspec.model import (
    Balancer,
    Constraint,
    HealthCheck,
    JobSpec,
    Resources,
    Runtime,
    Scaling,
)
from walle.jobspec.parse import HEALTH_ONLY, parse_spec
from walle.jobspec.readers import Problem, SpecError

# ---------------------------------------------------------------- entry points


def load_spec_file(path: str | Path) -> JobSpec:
    """Read and validate a spec file; an unreadable file is a SpecError too."""
    source = str(path)
    try:
        with open(path, "rb") as stream:  # bounded read: the path may be a device or a pipe
            raw = stream.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise SpecError([Problem(ROOT, f"cannot read file: {reason}")], source) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([Problem(ROOT, f"file is not UTF-8 text: {exc.reason} at byte "
                                       f"{exc.start}")], source) from exc
    return load_spec_text(text, source)


def load_spec_text(text: str, source: str = "<input>") -> JobSpec:
    """Parse YAML (JSON is valid YAML too) and validate it."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        raise SpecError([Problem(ROOT, f"spec is larger than {MAX_SPEC_BYTES} bytes")], source)
    try:
        data = yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise SpecError([Problem(ROOT, f"not valid YAML: {_yaml_reason(exc)}")], source) from exc
    except RecursionError:
        raise SpecError([Problem(ROOT, "not valid YAML: lists or mappings are nested too "
                                       "deeply")], source) from None
    return parse_spec(data, source)




def spec_to_data(spec: JobSpec) -> dict:
    """The spec in input form (plain JSON types), so `parse_spec(spec_to_data(s)) == s`.

    Store this (not `JobSpec.to_dict()`) wherever a spec is read back, such as Consul KV:
    reading it back validates it again.
    """
    data = {
        "name": spec.name, "kind": spec.kind, "count": spec.count, "priority": spec.priority,
        "strategy": spec.strategy, "restart": spec.restart, "schedule": spec.schedule,
        "concurrency": ({"policy": spec.concurrency, "max": spec.max_runs}
                        if spec.concurrency == "allow" else spec.concurrency),
        "scaling": _scaling_data(spec.scaling) if spec.scaling else None,
        "resources": _resources_data(spec.resources),
        "runtime": _runtime_data(spec.runtime),
        "constraints": [_constraint_data(c) for c in spec.constraints],
        "data": list(spec.data),
        "health": _health_data(spec.health) if spec.health else None,
        "stop": _drop_none({"signal": spec.stop.signal, "timeout": spec.stop.timeout,
                            "pre_stop": list(spec.stop.pre_stop), "drain": spec.stop.drain}),
        "service": _drop_none({"name": spec.service.name, "port": spec.service.port,
                               "tags": list(spec.service.tags),
                               "lb": _balancer_data(spec.service.lb)}) if spec.service else None,
        "retries": spec.retries if spec.kind != "service" else None,
        "update": {"max_parallel": spec.update.max_parallel,
                   "health_timeout": spec.update.health_timeout,
                   "auto_rollback": spec.update.auto_rollback},
        "secrets": {s.name: {s.source: s.path} for s in spec.secrets} or None,
        "ports": [_drop_none({"label": p.label, "static": p.static}) for p in spec.ports] or None,
        "placement": {"movable": spec.placement.movable} if spec.placement else None,
    }
    return _drop_none(data)


def _scaling_data(scaling: Scaling) -> dict:
    metric = {"prometheus": scaling.query} if scaling.metric == "prometheus" else scaling.metric
    return {"min": scaling.min, "max": scaling.max, "metric": metric, "target": scaling.target,
            "cooldown": scaling.cooldown}


def _resources_data(res: Resources) -> dict:
    return _drop_none({
        "cpu": {"min": res.cpu.min, "max": res.cpu.max},
        "memory": {"min": int(res.memory.min), "max": int(res.memory.max)},
        "disk": res.disk, "io_weight": res.io_weight, "gpus": res.gpus,
        "tasks_max": res.tasks_max,
    })


def _runtime_data(rt: Runtime) -> dict:
    return _drop_none({
        "type": rt.kind, "command": rt.command, "args": list(rt.args), "env": dict(rt.env),
        "user": rt.user, "working_dir": rt.working_dir, "image": rt.image,
        "privileged": rt.privileged or None, "capabilities": list(rt.capabilities) or None,
        "jit": rt.jit or None,
    })


def _constraint_data(c: Constraint) -> dict:
    if c.operator == "distinct_hosts":
        return {"operator": c.operator}
    value = list(c.value) if isinstance(c.value, tuple) else c.value
    return {"attribute": c.attribute, "operator": c.operator, "value": value}


def _health_data(h: HealthCheck) -> dict:
    data = {"type": h.type, "interval": h.interval, "timeout": h.timeout,
            "deregister_after": h.deregister_after}
    only = {"path": h.path, "port": h.port, "ttl": h.ttl}
    data.update({k: v for k, v in only.items() if h.type in HEALTH_ONLY[k]})
    return _drop_none(data)


def _balancer_data(lb: Balancer | None) -> dict | None:
    return {"port": lb.port, "mode": lb.mode} if lb else None


def _drop_none(data: dict) -> dict:
    return {k: v for k, v in data.items() if v is not None}


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one, aliases
    (a few kilobytes of `*a` expand to hundreds of megabytes: a spec is written out) and
    numbers longer than the node's grammar allows (before converting them)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a job spec; write the value "
                "out where it is needed", mark)
        return super().compose_node(parent, index)

    def construct_yaml_int(self, node):
        return super().construct_yaml_int(_short_number(node))

    def construct_yaml_float(self, node):
        return super().construct_yaml_float(_short_number(node))

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node,
                                                                           yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _short_number(node: yaml.ScalarNode) -> yaml.ScalarNode:
    if len(node.value) > grammar.MAX_NUMBER_CHARS:
        raise yaml.constructor.ConstructorError(
            None, None, f"a number of {len(node.value)} characters; numbers are at most "
            f"{grammar.MAX_NUMBER_CHARS} characters long (quote it if it is text)",
            node.start_mark)
    return node


StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)
StrictLoader.add_constructor("tag:yaml.org,2002:float", StrictLoader.construct_yaml_float)


def _yaml_reason(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return " ".join(f"{where}{problem}".split())

