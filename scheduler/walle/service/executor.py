"""The executor: turns the core's actions into playbook runs, one run per batch.

Each call groups instances by node, runs one playbook on exactly the nodes involved, and
answers per instance (ok or the error), so a failed host never fails the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from walle import naming
from walle.adapters.runner import HostResult, RunResult, run_command, run_playbook
from walle.core import Allocation
from walle.core.grants import grant_alone
from walle.images import ImageError, ImageStore, store_root
from walle.jobspec import JobSpec
from walle.service.adopt import instance_manifest
from walle.service.params import (
    batch_commit_args,
    cron_history_args,
    drain_of,
    image_args,
    instance_vars,
    leave_args,
    slice_args,
    stop_vars,
)
from walle.service.policy import PrivilegePolicy
from walle.service.records import attempt_of
from walle.service.secrets import SecretError, SecretResolver

log = logging.getLogger("walle.executor")

PlaybookRunner = Callable[..., RunResult]


@dataclass(frozen=True)
class Outcome:
    ok: bool
    error: str = ""


OK = Outcome(True)

# What runs on a node, read from the node itself: the instance manifests place_instance.yml
# writes, then every loaded walle-* unit. A fixed script (no value from a job, a node or Consul
# enters it), run through command.yml's argv.
LIST_INSTANCES = ("ls -1 /var/lib/walle/instances 2>/dev/null; echo '--'; "
                  "systemctl list-units --all --plain --no-legend --no-pager 'walle-*'")


@dataclass(frozen=True)
class NodeInstances:
    """The Walle instances one node knows of: ids with a manifest, and its walle-* units
    (unit name -> ActiveState)."""

    manifests: frozenset[str] = frozenset()
    units: dict[str, str] = field(default_factory=dict)

    def instance_ids(self) -> set[str]:
        ids = set(self.manifests)
        for unit in self.units:
            parsed = naming.parse_unit(unit)
            if parsed is not None:
                ids.add(naming.instance_id(*parsed))
        return ids


def parse_instance_listing(stdout: str) -> NodeInstances:
    """LIST_INSTANCES' output -> NodeInstances (lines it does not recognise are ignored)."""
    manifest_part, _, unit_part = stdout.partition("\n--\n")
    if not unit_part and stdout.startswith("--\n"):
        manifest_part, unit_part = "", stdout[3:]
    manifests = frozenset(line.strip()[:-len(".json")] for line in manifest_part.splitlines()
                          if line.strip().endswith(".json"))
    units = {}
    for line in unit_part.splitlines():
        cols = line.split()
        if len(cols) >= 3 and naming.parse_unit(cols[0]) is not None and cols[1] == "loaded":
            units[cols[0]] = cols[2]
    return NodeInstances(manifests, units)


def gpu_indices_of(alloc: Allocation, spec: JobSpec) -> tuple[int, ...] | None:
    """The GPUs the core gave the instance (core/gpus.py); None for one placed before the
    core assigned indices (its slice then allows every GPU of the node until a regrant)."""
    if spec.resources.gpus <= 0:
        return None
    return alloc.gpu_indices if len(alloc.gpu_indices) == spec.resources.gpus else None


class Executor:
    def __init__(self, inventory: str | dict, node_consul_addr: str, *,
                 register: bool = True, timeout: float = 300.0,
                 runner: PlaybookRunner = run_playbook,
                 node_consul_auth: Mapping[str, str] | None = None,
                 policy: PrivilegePolicy | None = None,
                 secrets: SecretResolver | None = None,
                 images: ImageStore | None = None):
        self.inventory = inventory
        self.node_consul_addr = node_consul_addr
        self.node_consul_auth = dict(node_consul_auth or {})  # params.consul_auth: node paths
        self.register = register
        self.timeout = timeout
        self.runner = runner
        self.policy = policy or PrivilegePolicy()
        self.secrets = secrets
        self.images = images or ImageStore(store_root())  # $WALLE_IMAGE_STORE or the default

    def place(self, items: Iterable[tuple[Allocation, JobSpec]],
              addresses: Mapping[str, str],
              replacing: Collection[str] = ()) -> dict[str, Outcome]:
        """Place instances. `replacing`: the keys of those whose new version replaces the
        instance running on the same node: they leave the pool and drain before the restart."""
        batch: dict[str, list[dict]] = {}
        refused: dict[str, Outcome] = {}
        credentials: dict[str, dict[str, str]] = {}
        for alloc, spec in items:
            grant = alloc.grant or grant_alone(spec.resources)
            address = addresses.get(alloc.node)
            if not address:
                raise ValueError(f"no address known for node {alloc.node!r}")
            try:
                image = self._image_of(spec)
            except _Refused as refusal:
                refused[naming.instance_id(alloc.job, alloc.slot)] = Outcome(False, str(refusal))
                continue
            instance = instance_vars(spec, alloc.slot, address, grant, self.node_consul_addr,
                                     consul_auth=self.node_consul_auth,
                                     gpu_indices=gpu_indices_of(alloc, spec), image=image,
                                     ports=dict(alloc.dynamic_ports))
            instance["manifest"] = instance_manifest(alloc, spec, grant)
            if alloc.key in replacing and spec.service is not None:
                instance["leave"] = leave_args(alloc.job, alloc.slot, self.node_consul_addr,
                                               consul_auth=self.node_consul_auth,
                                               drain=drain_of(spec))
            if spec.kind == "batch":
                instance["workload"]["commit"] = batch_commit_args(
                    alloc.job, alloc.slot, alloc.node, attempt_of(alloc),
                    self.node_consul_addr, self.node_consul_auth)
            elif spec.kind == "cron":
                instance["workload"]["history"] = cron_history_args(
                    alloc.job, alloc.slot, alloc.node, self.node_consul_addr,
                    self.node_consul_auth)
            iid = instance["instance"]["id"]
            try:
                self._admit(spec)
                if spec.secrets:
                    credentials[iid] = self._secrets_of(spec)
            except _Refused as refusal:
                refused[iid] = Outcome(False, str(refusal))
                continue
            batch.setdefault(alloc.node, []).append(instance)
        # Secret values travel apart from the instances (which appear in loop results) and
        # only to the node that runs them; place_instance.yml hands them over with no_log.
        extra = {"walle_credentials": credentials} if credentials else {}
        return {**refused, **self._run("place.yml", batch, extra)}

    def _admit(self, spec: JobSpec) -> None:
        """The cluster policy, checked before anything reaches a node."""
        reason = self.policy.refusal(spec)
        if reason:
            raise _Refused(reason)

    def _image_of(self, spec: JobSpec) -> dict[str, str] | None:
        """The store's archive for runtime.image; an unknown image or version is refused here,
        before anything reaches a node."""
        if spec.runtime.image is None:
            return None
        try:
            manifest = self.images.resolve(spec.runtime.image)
        except ImageError as err:
            raise _Refused(f"job {spec.name}: runtime.image: {err}") from err
        return image_args(manifest.digest, str(self.images.blob_path(manifest.digest)))

    def _secrets_of(self, spec: JobSpec) -> dict[str, str]:
        if self.secrets is None:
            raise _Refused(f"job {spec.name}: has secrets, but this scheduler reads none")
        try:
            return self.secrets(spec)
        except SecretError as err:
            raise _Refused(f"job {spec.name}: {err}") from err

    def stop(self, allocs: Iterable[Allocation],
             jobs: Mapping[str, JobSpec] | None = None) -> dict[str, Outcome]:
        """Stop instances; each leaves the pool and drains first (its job's stop.drain from
        `jobs`, the default for a job not there)."""
        return self.stop_instances(((a.job, a.slot, a.node) for a in allocs), jobs)

    def stop_instances(self, instances: Iterable[tuple[str, int, str]],
                       jobs: Mapping[str, JobSpec] | None = None) -> dict[str, Outcome]:
        """Stop instances known only by name (orphans found on a node): (job, slot, node)."""
        batch: dict[str, list[dict]] = {}
        for job, slot, node in instances:
            batch.setdefault(node, []).append(
                stop_vars(job, slot, self.node_consul_addr, consul_auth=self.node_consul_auth,
                          drain=drain_of((jobs or {}).get(job))))
        return self._run("stop.yml", batch)

    def regrant(self, items: Iterable[tuple[Allocation, JobSpec]]) -> dict[str, Outcome]:
        batch: dict[str, list[dict]] = {}
        for alloc, spec in items:
            grant = alloc.grant or grant_alone(spec.resources)
            batch.setdefault(alloc.node, []).append({
                "instance": {"id": alloc.key, "job": alloc.job, "slot": alloc.slot},
                "slice": slice_args(spec, alloc.slot, grant,
                                    gpu_indices=gpu_indices_of(alloc, spec)),
            })
        return self._run("grants.yml", batch)

    def probe_units(self, units: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """systemd's view of units: {(node, unit): {LoadState, ActiveState, Result,
        ExecMainStatus, InactiveExitTimestampMonotonic (0: not started since loaded)}}, one
        ad-hoc command per node. Nodes that do not answer are left out."""
        by_node: dict[str, list[str]] = {}
        for node, unit in units:
            by_node.setdefault(node, []).append(unit)
        out: dict[tuple[str, str], dict] = {}
        for node, names in sorted(by_node.items()):
            argv = ["systemctl", "show", *names, "-p",
                    "Id,LoadState,ActiveState,SubState,Result,ExecMainStatus,"
                    "InactiveExitTimestampMonotonic"]
            result = run_command(self.inventory, [node], argv, timeout=30).get(node)
            if result is None or result.rc != 0:
                continue
            for block in result.stdout.split("\n\n"):
                props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
                if props.get("Id"):
                    out[(node, props["Id"])] = props
        return out

    def list_instances(self, nodes: Iterable[str]) -> dict[str, NodeInstances]:
        """What runs on `nodes` by their own account (one ad-hoc command for all of them).
        Nodes that do not answer are left out."""
        nodes = sorted(set(nodes))
        if not nodes:
            return {}
        results = run_command(self.inventory, nodes, ["sh", "-c", LIST_INSTANCES],
                              timeout=30)
        return {node: parse_instance_listing(r.stdout) for node, r in results.items()
                if r.rc == 0}

    def _run(self, playbook: str, batch: dict[str, list[dict]],
             extra: dict | None = None) -> dict[str, Outcome]:
        if not batch:
            return {}
        ids = {node: [i["instance"]["id"] for i in items] for node, items in batch.items()}
        log.info("%s on %s: %s", playbook, ",".join(sorted(batch)),
                 " ".join(i for v in ids.values() for i in v))
        result = self.runner(playbook, self.inventory,
                             {"walle_batch": batch, "walle_register": self.register,
                              **(extra or {})},
                             sorted(batch), timeout=self.timeout)
        log.info("%s %s in %.1fs", playbook, result.status, result.duration)
        outcomes: dict[str, Outcome] = {}
        for node, instance_ids in ids.items():
            host = result.hosts.get(node) or HostResult(node, failed=True)
            for iid in instance_ids:
                outcomes[iid] = _outcome(host, iid, result)
        return outcomes


class _Refused(Exception):
    """An instance the leader will not place; the message is its recorded reason."""


def _outcome(host: HostResult, instance: str, result: RunResult) -> Outcome:
    if instance in host.failed_instances:
        return Outcome(False, host.failed_instances[instance])
    if host.ok:
        return OK
    if host.unreachable:
        why = "; ".join(t.msg for t in host.failed_tasks if t.msg)
        return Outcome(False, f"node {host.host} unreachable" + (f": {why}" if why else ""))
    reasons = "; ".join(f"{t.task}: {t.msg}" for t in host.failed_tasks)
    return Outcome(False, reasons or f"{result.status} on {host.host}: {result.output_tail[-300:]}")


def failed_outcomes(key_of: Callable[[Any], str]) -> Callable[[list, str], dict[str, Outcome]]:
    """on_error for executor calls answering per instance: each item failed, with the reason."""
    return lambda items, reason: {key_of(item): Outcome(False, reason) for item in items}
