"""A Consul stand-in for the Walle lab and tests. LAB AND TEST ONLY: it is not Consul.

Serves the Consul HTTP API endpoints Walle uses with Consul's documented semantics (indexes,
blocking queries, KV, transactions, sessions, catalog, health, agent, events, status), answers
DNS like Consul, takes membership from real Serf agents and persists its state. See
docs/consul-standin.md for what it does and does not reproduce.
"""

from .server import Standin, StandinConfig, start_in_thread

__all__ = ["Standin", "StandinConfig", "start_in_thread"]
