"""`walle scheduler run`: the scheduler service (several may run; one leads)."""

from __future__ import annotations

import argparse
import logging
import re
import signal
import socket

from walle.adapters.consul import ConsulApi, ConsulConfig
from walle.core.shed import ShedPolicy
from walle.jobspec.grammar import CAPABILITIES
from walle.service.autoscale import DEFAULT_INTERVAL as AUTOSCALE_INTERVAL
from walle.service.dispatch import DEFAULT_MAX_INFLIGHT
from walle.service.elastic import USAGE_INTERVAL
from walle.service.params import consul_auth
from walle.service.policy import PrivilegePolicy
from walle.service.presence import (
    DEFAULT_DOWN_GRACE,
    DEFAULT_FENCE_AFTER,
    DEFAULT_LEAVE_GRACE,
    check_graces,
)
from walle.service.scheduler import Scheduler, SchedulerConfig
from walle.service.secrets import DEFAULT_SECRETS_DIR


def register(subparsers) -> None:
    parser = subparsers.add_parser("scheduler", help="the scheduler service")
    actions = parser.add_subparsers(dest="scheduler_action", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="run a scheduler instance (leader election in Consul)")
    run.add_argument("--consul-addr", metavar="URL", help="Consul HTTP API the scheduler uses")
    run.add_argument("--inventory", required=True,
                     help="Ansible inventory of the nodes: a walle_consul file (the nodes of "
                          "Consul's catalog, read at every run; see docs/architecture.md)")
    run.add_argument("--node-consul-addr", default="http://127.0.0.1:8500",
                     help="Consul agent address as seen from the nodes (default: %(default)s)")
    run.add_argument("--node-consul-token-file", metavar="PATH", default="",
                     help="file ON THE NODES holding the node-side Walle ACL token (the consul "
                          "role's consul_walle_token_file); read there, never sent from here")
    run.add_argument("--node-consul-ca-file", metavar="PATH", default="",
                     help="CA bundle ON THE NODES for the agents' HTTPS certificate")
    run.add_argument("--name", default=socket.gethostname(), help="instance name")
    run.add_argument("--session-node", help="bind the leader session to this Consul node's "
                                            "health (default: the agent's node)")
    run.add_argument("--lock-delay", type=float, default=15.0, metavar="SECONDS")
    run.add_argument("--lock-ttl", type=int, default=10, metavar="SECONDS")
    run.add_argument("--node-leave-grace", type=_seconds, default=DEFAULT_LEAVE_GRACE,
                     metavar="SECONDS",
                     help="a node gone from the catalog (graceful leave, agent restart) keeps "
                          "its instances this long before they move (default: %(default)s)")
    run.add_argument("--node-down-grace", type=_seconds, default=DEFAULT_DOWN_GRACE,
                     metavar="SECONDS",
                     help="a failed node (dead or cut off) keeps its instances this long before "
                          "they move, so a cut-off node's fence stops them first; at least "
                          "--node-fence-after + 4 (default: %(default)s)")
    run.add_argument("--node-fence-after", type=_seconds, default=DEFAULT_FENCE_AFTER,
                     metavar="SECONDS",
                     help="the nodes' fence: seconds cut off from Consul before a node stops its "
                          "Walle units (the node role's walle_fence_after; default: %(default)s)")
    run.add_argument("--max-inflight-batches", type=_batches, default=DEFAULT_MAX_INFLIGHT,
                     metavar="N",
                     help="playbook runs the leader keeps going beside its loop, one per node "
                          "at a time (0: it waits for each; default: %(default)s)")
    run.add_argument("--strategy", choices=["spread", "binpack"], default="spread",
                     help="cluster default placement strategy (jobs may override)")
    run.add_argument("--seed", type=int, default=0, help="placement seed (deterministic plans)")
    run.add_argument("--no-register", action="store_true",
                     help="do not register instances in Consul (tests without agents)")
    run.add_argument("--allow-privileged", action="store_true",
                     help="cluster policy: jobs may ask for runtime.privileged (root, no "
                          "sandbox); default: refused")
    run.add_argument("--allow-capability", action="append", default=[], metavar="CAP",
                     type=_capability,
                     help="cluster policy: jobs may keep this capability in their sandbox "
                          "(repeat for more; default: none)")
    run.add_argument("--secrets-dir", default=DEFAULT_SECRETS_DIR, metavar="DIR",
                     help="where `secrets: {NAME: {file: PATH}}` are read on this control node "
                          "(default: %(default)s)")
    run.add_argument("--prometheus-addr", metavar="URL", type=_http_url,
                     help="Prometheus for `scaling: {metric: {prometheus: QUERY}}` "
                          "(GET URL/api/v1/query); without it such jobs keep their count")
    run.add_argument("--autoscale-interval", type=_seconds, default=AUTOSCALE_INTERVAL,
                     metavar="SECONDS", help="how often jobs with `scaling` are measured "
                                             "(default: %(default)s)")
    run.add_argument("--usage-interval", type=_seconds, default=USAGE_INTERVAL,
                     metavar="SECONDS",
                     help="usage-driven grants: read each node's walle-exporter this often and "
                          "move grants within min..max with it (the autoscaler measures on "
                          "the same reading); 0: grants off, usage then read every "
                          "--autoscale-interval for jobs scaling on cpu or memory "
                          "(default: %(default)s)")
    run.add_argument("--shed-moves-per-minute", type=_moves, default=ShedPolicy.moves_per_minute,
                     metavar="N",
                     help="nodes under sustained usage pressure hand movable services to "
                          "quieter nodes, at most N moves a minute cluster-wide; 0: off "
                          "(needs --usage-interval; default: %(default)s)")
    run.add_argument("--log-level", default="INFO")
    run.set_defaults(func=cmd_run)


def _http_url(text: str) -> str:
    if not re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s)://host:port URL")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def _count(what: str):
    """An argparse type: a whole number of `what`, 0 or more."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {what} (0 or more)")
        return value
    return parse


_batches = _count("batches")
_moves = _count("moves")


def _capability(text: str) -> str:
    if text.upper() not in CAPABILITIES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a capability; use one of "
                                         f"{', '.join(CAPABILITIES)}")
    return text.upper()


def scheduler_config(args) -> SchedulerConfig:
    """SchedulerConfig from `walle scheduler run`'s arguments (ValueError names a bad one)."""
    check_graces(args.node_fence_after, args.node_down_grace, args.node_leave_grace)
    return SchedulerConfig(
        name=args.name, inventory=args.inventory, node_consul_addr=args.node_consul_addr,
        node_consul_auth=consul_auth(args.node_consul_token_file, args.node_consul_ca_file),
        seed=args.seed, strategy=args.strategy, lock_ttl=args.lock_ttl,
        lock_delay=args.lock_delay, session_node=args.session_node,
        node_leave_grace=args.node_leave_grace, node_down_grace=args.node_down_grace,
        register=not args.no_register,
        privilege=PrivilegePolicy.of(args.allow_privileged, args.allow_capability),
        secrets_dir=args.secrets_dir,
        prometheus_addr=args.prometheus_addr,
        autoscale_interval=max(1.0, args.autoscale_interval),
        usage_interval=args.usage_interval,
        shed=ShedPolicy(moves_per_minute=args.shed_moves_per_minute),
        max_inflight_batches=args.max_inflight_batches,
    )


def cmd_run(args) -> int:
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = scheduler_config(args)
    except ValueError as err:
        logging.getLogger("walle.scheduler").error("walle scheduler run: %s", err)
        return 2
    api = ConsulApi(ConsulConfig.from_env(addr=args.consul_addr))
    scheduler = Scheduler(api, config)
    signal.signal(signal.SIGTERM, lambda *_: scheduler.stop())
    signal.signal(signal.SIGINT, lambda *_: scheduler.stop())
    scheduler.run_forever()
    return 0
