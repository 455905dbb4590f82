"""Walle's Consul adapter: the only code in Walle that imports py-consul (`consul`).

Everything here returns Walle's own types (dataclasses below) and raises Walle's own errors
(`ConsulError`, `ConsulUnreachable`, ...). See docs/consul.md.
"""

from walle.adapters.consul.api import ConsulApi, go_duration
from walle.adapters.consul.config import ConsulConfig, parse_address
from walle.adapters.consul.errors import (
    ConsulConfigError,
    ConsulDenied,
    ConsulError,
    ConsulNotFound,
    ConsulUnreachable,
    NotLeader,
)
from walle.adapters.consul.events import (
    DRAIN_EVENT,
    Event,
    fire_drain,
    fire_event,
    list_events,
    watch_events,
)
from walle.adapters.consul.leader import LeaderLock
from walle.adapters.consul.nodes import NodeInfo, fetch_nodes, node_from_catalog, nodes
from walle.adapters.consul.retry import RetryPolicy, call_with_retry
from walle.adapters.consul.services import (
    ServiceInstance,
    check_id,
    check_options,
    deregister_instance,
    register_instance,
    registration,
    service_health,
    update_ttl,
)
from walle.adapters.consul.state import (
    LEADER_KEY,
    TXN_MAX_OPS,
    Allocation,
    BatchCommit,
    KvOp,
    StateStore,
    StoredJob,
    TxnError,
    TxnResult,
    Unreadable,
)
from walle.adapters.consul.watch import TokenBucket, Watch


def watch_nodes(api: ConsulApi, **kw) -> Watch[list[NodeInfo]]:
    """Watch node membership and serfHealth (yields the full node list on each change)."""
    return Watch(lambda index, wait: fetch_nodes(api, index, wait), **kw)


__all__ = [
    "DRAIN_EVENT", "LEADER_KEY", "TXN_MAX_OPS", "Allocation", "BatchCommit", "ConsulApi",
    "ConsulConfig", "ConsulConfigError", "ConsulDenied", "ConsulError", "ConsulNotFound",
    "ConsulUnreachable", "Event",
    "KvOp", "LeaderLock", "NodeInfo", "NotLeader", "RetryPolicy", "ServiceInstance",
    "StateStore", "StoredJob", "TokenBucket", "TxnError", "TxnResult", "Unreadable", "Watch",
    "call_with_retry", "check_id", "check_options", "deregister_instance", "fetch_nodes",
    "fire_drain", "fire_event", "go_duration", "list_events", "node_from_catalog", "nodes",
    "parse_address", "register_instance", "registration", "service_health", "update_ttl",
    "watch_events", "watch_nodes",
]
