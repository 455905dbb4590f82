"""The web console on a real lab, in a real browser (Debian's headless chromium): the page
shows the lab's nodes by zone, a scale from the page changes the job's count in Consul, and a
killed node's box turns down within 10 s. The test leaves a screenshot of the page (commit a
fresh one as docs/img/console.png: WALLE_CONSOLE_SCREENSHOT=docs/img/console.png)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import test_scheduler_lab
from test_scheduler_lab import api_spec

from walle.adapters.consul import ConsulConfig
from walle.catalog import load_catalog
from walle.cli.demo import submit
from walle.console.server import Console, serving

pytestmark = [pytest.mark.lab, pytest.mark.browser]

CATALOG = Path(__file__).resolve().parents[2] / "catalog"
DOWN_WITHIN_S = 10.0


# the scheduler tests' lab for this module: 3 nodes, the stand-in, Serf, two schedulers
pool = test_scheduler_lab.pool


@pytest.fixture
def console_url(pool):
    console = Console(ConsulConfig.from_env(addr=pool.lab.consul_http_addr),
                      load_catalog(CATALOG))
    with serving(console, "127.0.0.1", 0) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/"


def box(page, node: str, health: str | None = None):
    selector = f"li.node[data-node='{node}']"
    return page.locator(selector + (f"[data-health='{health}']" if health else ""))


def test_the_page_shows_the_pool_scales_a_job_and_sees_a_node_die(pool, console_url, page,
                                                                   tmp_path):
    submit(pool.store, api_spec(count=2))
    pool.wait("api: 2 running", lambda: pool.converged("api", 2))
    page.goto(console_url)
    nodes = sorted(pool.snapshot().nodes)
    for node in nodes:
        box(page, node, "passing").wait_for(timeout=10_000)
    zones = page.locator("#pool .zone h3").all_text_contents()
    # the host's own Serf agent is a catalog node too: no zone, not schedulable
    assert zones == ["No zone set", "Zone z1", "Zone z2", "Zone z3"]

    page.get_by_label("Consul ACL token").fill("lab-operator")
    page.locator("#scale-job").select_option("api")
    page.get_by_label("Count").fill("3")
    page.get_by_role("button", name="Scale").click()
    page.locator("#action-result").filter(has_text="api: scaled to 3").wait_for(timeout=10_000)
    assert pool.store.job("api").spec["count"] == 3
    pool.wait("api: 3 running", lambda: pool.converged("api", 3))
    page.locator("#jobs tbody tr", has_text="api").locator("td").nth(2).filter(
        has_text="3").wait_for(timeout=10_000)  # Running: 3, seen by the page's poll

    victim = nodes[-1]
    start = time.monotonic()
    pool.lab.kill_node(victim)
    box(page, victim, "down").wait_for(timeout=DOWN_WITHIN_S * 1000)
    took = time.monotonic() - start
    print(f"console: {victim} killed -> its box down after {took:.1f}s")
    assert took <= DOWN_WITHIN_S
    assert box(page, nodes[0], "passing").count() == 1

    # the placement explanation: the dead node is refused, and says why
    page.locator("#explain-job").select_option("api")
    page.get_by_role("button", name="Explain").click()
    page.locator("#explanation tbody tr", has_text=victim).filter(
        has_text="node down").wait_for(timeout=10_000)
    page.wait_for_timeout(3000)  # the lost instance's slot moves on (the picture)
    shot = tmp_path / "console.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("WALLE_CONSOLE_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["WALLE_CONSOLE_SCREENSHOT"])
