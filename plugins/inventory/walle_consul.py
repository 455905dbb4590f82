# Copyright (c) Walle contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Walle's pool as an Ansible inventory: the nodes of Consul's catalog (see DOCUMENTATION)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: walle_consul
short_description: Walle's nodes from Consul's catalog
description:
  - Lists the nodes of Consul's catalog as inventory hosts, with their address as
    C(ansible_host).
  - A node that carries Walle's node meta (C(walle_cpu) and well-formed C(walle_*) values,
    written by the consul role) is in the group C(walle_nodes) and in groups of its zone
    (C(walle_zone_<zone>)), rack (C(walle_rack_<rack>)) and labels
    (C(walle_label_<key>_<value>)). Any other catalog node (a Consul server, a machine not
    provisioned by C(site.yml), a node whose meta is malformed) is in C(walle_unschedulable),
    with the reason in C(walle_unschedulable_reason); the scheduler never chooses it.
  - Host variables come from the node meta and are never templated (they come from Consul).
    Connection settings (user, key, SSH arguments) come from group vars next to the
    inventory file (C(group_vars/all.yml)), as with any inventory source.
  - Talks to Consul through Walle's Consul adapter (py-consul), with the same address, token
    and TLS rules as every C(walle) command (docs/consul.md).
  - The configuration file name must end in C(walle_consul.yml) or C(walle_consul.yaml).
requirements:
  - the walle package (its Consul adapter uses py-consul), found on the Python path or in the
    C(scheduler/) folder of the source tree this plugin belongs to
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: Marks the file as a source for this plugin.
    required: true
    choices: ['walle_consul', 'walle.pool.walle_consul']
  url:
    description: Consul's HTTP API, C(host:port) or C(scheme://host:port).
    type: str
    default: http://127.0.0.1:8500
    env:
      - name: CONSUL_HTTP_ADDR
  token:
    description: Consul ACL token (read-only on the catalog is enough). Prefer O(token_file).
    type: str
    env:
      - name: CONSUL_HTTP_TOKEN
  token_file:
    description: A file holding the Consul ACL token (used when O(token) is not set).
    type: path
    env:
      - name: CONSUL_HTTP_TOKEN_FILE
  ca_file:
    description: CA bundle that verifies Consul's HTTPS certificate.
    type: path
    env:
      - name: CONSUL_CACERT
  validate_certs:
    description: Verify Consul's HTTPS certificate.
    type: bool
    default: true
    env:
      - name: CONSUL_HTTP_SSL_VERIFY
  datacenter:
    description: Consul datacenter to list (default the agent's).
    type: str
    env:
      - name: CONSUL_DATACENTER
  timeout:
    description: Seconds to wait for Consul's answer.
    type: float
    default: 10
"""

EXAMPLES = r"""
# /etc/walle/inventory/walle_consul.yml (connection settings in group_vars/all.yml beside it)
plugin: walle_consul
url: https://consul.example.net:8501
token_file: /etc/walle/consul-scheduler.token
ca_file: /etc/walle/consul-ca.pem

# ansible-inventory -i /etc/walle/inventory/walle_consul.yml --graph
"""

import re  # noqa: E402 - Ansible's layout: documentation first
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from ansible.errors import AnsibleError  # noqa: E402
from ansible.plugins.inventory import (  # noqa: E402
    BaseInventoryPlugin,
    Cacheable,
    Constructable,
)

SCHEDULABLE_GROUP = "walle_nodes"
UNSCHEDULABLE_GROUP = "walle_unschedulable"
# A Consul node name used as an inventory host name: what DNS and Consul allow.
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
GROUP_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
# plugins/inventory/walle_consul.py -> <source tree>/scheduler, where the walle package lives
SOURCE_TREE_PACKAGE = Path(__file__).resolve().parents[2] / "scheduler"


def _consul_adapter():
    """Walle's Consul adapter (the one place that talks to Consul); from the installed package,
    else from the source tree this plugin is part of."""
    try:
        from walle.adapters import consul
    except ImportError:
        if not (SOURCE_TREE_PACKAGE / "walle").is_dir():
            raise AnsibleError("walle_consul: the walle package is not importable; install "
                               "it in the Python that runs Ansible") from None
        sys.path.append(str(SOURCE_TREE_PACKAGE))
        from walle.adapters import consul
    return consul


def group_name(*parts: str) -> str:
    """A group name from Consul values: anything but letters, digits and _ becomes _."""
    return GROUP_UNSAFE.sub("_", "_".join(parts))


def node_rows(nodes) -> list[dict]:
    """The adapter's NodeInfo list -> plain rows (what the cache keeps)."""
    return [{"name": n.name, "address": n.address, "schedulable": n.schedulable,
             "problems": list(n.problems), "zone": n.zone, "rack": n.rack,
             "labels": dict(n.labels), "health": n.health, "meta": dict(n.meta)}
            for n in nodes]


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "walle_consul"

    def verify_file(self, path: str) -> bool:
        names = ("walle_consul.yml", "walle_consul.yaml")
        return super().verify_file(path) and path.endswith(names)

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        rows = self._cached_rows(path, cache)
        for row in rows:
            self._add_node(row)

    def _cached_rows(self, path: str, cache: bool) -> list[dict]:
        key = self.get_cache_key(path)
        use_cache = bool(self.get_option("cache"))
        if use_cache and cache:
            try:
                return self._cache[key]
            except KeyError:
                pass
        rows = self._fetch_rows()
        if use_cache:
            self._cache[key] = rows
        return rows

    def _fetch_rows(self) -> list[dict]:
        consul = _consul_adapter()
        env = {name: str(value) for name, value in (
            ("CONSUL_HTTP_ADDR", self.get_option("url")),
            ("CONSUL_HTTP_TOKEN", self.get_option("token")),
            ("CONSUL_HTTP_TOKEN_FILE", self.get_option("token_file")),
            ("CONSUL_CACERT", self.get_option("ca_file")),
            ("CONSUL_HTTP_SSL_VERIFY", "true" if self.get_option("validate_certs") else "false"),
            ("CONSUL_DATACENTER", self.get_option("datacenter")),
        ) if value not in (None, "")}
        try:
            config = consul.ConsulConfig.from_env(env=env,
                                                  timeout=float(self.get_option("timeout")))
            api = consul.ConsulApi(config, consul.RetryPolicy(attempts=3))
            return node_rows(consul.nodes(api))
        except consul.ConsulConfigError as err:
            raise AnsibleError(f"walle_consul: {err}") from err
        except consul.ConsulError as err:
            raise AnsibleError(f"walle_consul: reading Consul's catalog at "
                               f"{env.get('CONSUL_HTTP_ADDR')}: {err}") from err

    def _add_node(self, row: dict) -> None:
        name = row["name"]
        if not HOST_NAME.match(name):
            self.display.warning(f"walle_consul: Consul node {name!r} is not a host name; "
                                 "left out of the inventory")
            return
        host = self.inventory.add_host(name)
        values = {
            "ansible_host": row["address"],
            "walle_node_address": row["address"],
            "walle_node_health": row["health"],
            "walle_schedulable": row["schedulable"],
            "walle_zone": row["zone"],
            "walle_rack": row["rack"],
            "walle_labels": row["labels"],
            "walle_node_meta": row["meta"],
        }
        groups = [SCHEDULABLE_GROUP if row["schedulable"] else UNSCHEDULABLE_GROUP]
        if row["schedulable"]:
            groups += [group_name("walle_zone", row["zone"]) if row["zone"] else "",
                       group_name("walle_rack", row["rack"]) if row["rack"] else ""]
            groups += [group_name("walle_label", key, value)
                       for key, value in sorted(row["labels"].items())]
        else:
            values["walle_unschedulable_reason"] = "; ".join(row["problems"])
        for group in filter(None, groups):
            self.inventory.add_group(group)
            self.inventory.add_child(group, host)
        for var, value in values.items():
            self.inventory.set_variable(host, var, value)
        strict = self.get_option("strict")
        self._set_composite_vars(self.get_option("compose"), values, host, strict=strict)
        self._add_host_to_composed_groups(self.get_option("groups"), values, host, strict=strict)
        self._add_host_to_keyed_groups(self.get_option("keyed_groups"), values, host,
                                       strict=strict)
