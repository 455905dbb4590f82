"""The catalog in the lab: `walle package install kv-app` brings up its kvstore dependency
first, the app answers through its DNS name and keeps its count in the store, an upgrade rolls
the new version out, and uninstall --cascade removes both."""

from __future__ import annotations

import urllib.request

import dns.resolver
import pytest
from test_scheduler_lab import Pool, running_pool

from walle.cli.main import main

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def pool():
    with running_pool("c") as p:
        yield p


def ask_by_dns(pool: Pool, path: str = "/") -> str:
    """Resolve kv-app.service.consul (SRV: node and port) with the lab's Consul DNS and ask
    each instance; returns the last answer."""
    host, port = pool.lab.consul_dns_addr
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = [host], port, 2.0
    answer = resolver.resolve("kv-app.service.consul", "SRV")
    body = ""
    for srv in answer:
        (a,) = resolver.resolve(srv.target.to_text(), "A")
        with urllib.request.urlopen(f"http://{a.address}:{srv.port}{path}", timeout=5) as r:
            body = r.read().decode()
    return body


def answers(pool: Pool, words: str):
    def check():
        try:
            return words in ask_by_dns(pool)
        except (OSError, dns.exception.DNSException):
            return False
    return check


def test_install_upgrade_and_uninstall_kv_app_with_its_store(pool, capsys):
    addr = pool.lab.consul_http_addr
    code = main(["package", "install", "kv-app", "--version", "1.0.0", "--set", "count=2",
                 "--set", f"consul_http={addr}", "--consul-addr", addr])
    assert code == 0, capsys.readouterr().err
    pool.wait("kvstore and kv-app running",
              lambda: pool.converged("kvstore", 1) and pool.converged("kv-app", 2))
    pool.wait("kv-app 1.0.0 answers through DNS and counts in the store",
              answers(pool, "hello from kv-app 1.0.0: hit"), 60)
    first = int(ask_by_dns(pool).rsplit("hit ", 1)[1])

    code = main(["package", "upgrade", "kv-app", "--consul-addr", addr])
    assert code == 0, capsys.readouterr().err
    pool.wait("kv-app 1.1.0 answers", answers(pool, "hello from kv-app 1.1.0: hit"))
    pool.wait("the rollout finished", lambda: pool.converged("kv-app", 2))
    assert int(ask_by_dns(pool).rsplit("hit ", 1)[1]) > first  # same store, count kept

    assert main(["package", "uninstall", "kvstore", "--consul-addr", addr]) == 2
    assert main(["package", "uninstall", "kvstore", "--cascade", "--consul-addr", addr]) == 0
    pool.wait("both jobs gone", lambda: not pool.records("kv-app")
              and not pool.records("kvstore"))
    pool.wait("no kv-app in DNS", lambda: not pool.dns_nodes("kv-app"), 30)
    assert pool.store.packages() == {}
