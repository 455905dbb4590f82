"""The web console's server against a Consul HTTP API (the stand-in): the state document,
and the actions (scale, stop, drain, install) that need a token, the console's header and
a JSON body, and do what the CLI does. The `browser` tests load the page in Debian's headless
chromium: values from users show as text, never as markup; an action without a token is
refused on the page, and with one it changes the count."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from walle.adapters.consul import ConsulConfig, StateStore
from walle.catalog import load_catalog
from walle.console.server import Console, serving
from walle.core import Allocation, Capacity
from walle.jobspec import parse_spec
from walle.service.jobs import submit
from walle.service.records import SlotRecord, to_stored

pytestmark = pytest.mark.consul

CATALOG = Path(__file__).resolve().parents[2] / "catalog"
XSS = '<img src=x onerror="alert(1)">'


@pytest.fixture
def console(addr):
    """(base URL of a running console, its Console)."""
    c = Console(ConsulConfig.from_env(addr=addr), load_catalog(CATALOG), usage=False)
    with serving(c, "127.0.0.1", 0) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}", c


def job(name: str = "web", count: int = 2):
    return parse_spec({"name": name, "kind": "service", "count": count,
                       "resources": {"cpu": "0.1", "memory": "16M"},
                       "runtime": {"command": "/bin/sleep", "args": ["1000"]}})


def request(url: str, body=None, *, token: str | None = "secret", headers=None,
            method: str | None = None) -> tuple[int, dict]:
    sent = {"Content-Type": "application/json", "X-Walle-Console": "1"}
    if token is not None:
        sent["X-Consul-Token"] = token
    sent.update(headers or {})
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=sent, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_state_lists_the_catalog_nodes_jobs_and_packages(console, store):
    url, _ = console
    submit(store, job())
    status, doc = request(f"{url}/api/state", token=None)
    assert status == 200
    names = [n["name"] for z in doc["pool"] for r in z["racks"] for n in r["nodes"]]
    assert "walle-test-server" in names
    assert [j["job"] for j in doc["jobs"]] == ["web"]
    assert {p["name"] for p in doc["catalog"]} >= {"kv-app", "kvstore", "static-site"}
    assert doc["events"] == []  # no leader ran here: no history


def test_the_page_and_its_files_are_served_with_a_strict_content_policy(console):
    url, _ = console
    for path, kind in (("/", "text/html"), ("/console.js", "text/javascript"),
                       ("/console.css", "text/css")):
        with urllib.request.urlopen(url + path, timeout=10) as reply:
            assert reply.headers.get_content_type() == kind
            assert "script-src 'self'" in reply.headers["Content-Security-Policy"]


def test_scale_from_the_console_changes_the_count_in_consul(console, store):
    url, _ = console
    submit(store, job(count=2))
    status, doc = request(f"{url}/api/action/scale", {"job": "web", "count": 4})
    assert status == 200, doc
    assert doc["message"] == "web: scaled to 4"
    assert store.job("web").spec["count"] == 4


def test_an_action_without_a_token_is_refused_and_changes_nothing(console, store):
    url, _ = console
    submit(store, job(count=2))
    for token in (None, "", "   "):
        status, doc = request(f"{url}/api/action/scale", {"job": "web", "count": 5},
                              token=token)
        assert status == 401 and "token" in doc["error"]
    assert store.job("web").spec["count"] == 2


def test_actions_need_the_console_header_a_json_body_and_the_same_origin(console, store):
    url, _ = console
    submit(store, job(count=2))
    cases = [({"X-Walle-Console": ""}, "X-Walle-Console"),
             ({"Content-Type": "text/plain"}, "JSON body"),
             ({"Origin": "http://evil.example"}, "own page")]
    for headers, words in cases:
        status, doc = request(f"{url}/api/action/scale", {"job": "web", "count": 5},
                              headers=headers)
        assert status == 403 and words in doc["error"], doc
    status, doc = request(f"{url}/api/state", headers={"Host": "evil.example:8470"})
    assert status == 421  # another name for this address (DNS rebinding): not answered
    assert store.job("web").spec["count"] == 2


def test_bad_action_input_names_the_field(console, store):
    url, _ = console
    submit(store, job(count=2))
    for body, status_words in (({"job": "web", "count": -1}, (400, "count")),
                               ({"job": "web", "count": "many"}, (400, "count")),
                               ({"count": 3}, (400, "job: required")),
                               ({"job": "nope", "count": 3}, (409, "no job 'nope'"))):
        status, doc = request(f"{url}/api/action/scale", body)
        assert (status, status_words[1] in doc["error"]) == (status_words[0], True), doc
    status, doc = request(f"{url}/api/action/reboot", {"node": "x"})
    assert status == 404 and "scale" in doc["error"]
    assert store.job("web").spec["count"] == 2


def test_stop_and_drain_do_what_the_cli_does(console, store):
    url, _ = console
    submit(store, job())
    status, doc = request(f"{url}/api/action/stop", {"job": "web"})
    assert (status, doc["message"]) == (200, "web: stopping")
    assert store.job("web") is None
    status, doc = request(f"{url}/api/action/drain", {"node": "walle-test-server"})
    assert status == 200, doc
    assert "walle-test-server" in store.drains()[1]
    status, doc = request(f"{url}/api/action/drain", {"node": "walle-test-server",
                                                      "undo": True})
    assert status == 200 and "walle-test-server" not in store.drains()[1]
    status, doc = request(f"{url}/api/action/drain", {"node": "ghost"})
    assert status == 409 and "no node 'ghost'" in doc["error"]


def test_install_resolves_dependencies_and_bad_values_install_nothing(console, store):
    url, _ = console
    status, doc = request(f"{url}/api/action/install",
                          {"name": "kv-app", "values": ["count=not-a-number"]})
    assert status == 400 and "count" in doc["error"] and "nothing was installed" in doc["error"]
    assert store.jobs()[1] == {} and store.packages() == {}
    status, doc = request(f"{url}/api/action/install",
                          {"name": "kv-app", "version": "1.0.0", "values": ["count=3"]})
    assert status == 200, doc
    assert set(store.packages()) == {"kv-app", "kvstore"}
    assert store.job("kv-app").spec["count"] == 3


def failed_record(store: StateStore, job_name: str, reason: str) -> None:
    """A failed slot record with `reason`, written straight to KV (as a leader would)."""
    record = SlotRecord(Allocation(job_name, 0, "walle-test-server", Capacity(0.1, 1),
                                   Capacity(0.1, 1), "d", "r", state="failed"), reason=reason)
    stored = to_stored(record)
    body = json.dumps(stored.to_json())
    store.api.call("put record", lambda: store.api.client.kv.put(stored.key, body))


def test_a_reason_with_markup_reaches_the_page_as_data(console, store):
    """The server sends reasons as JSON strings; the browser test shows they render as text."""
    url, _ = console
    submit(store, job("web"))
    failed_record(store, "web", XSS)
    _, doc = request(f"{url}/api/state", token=None)
    (row,) = doc["jobs"][0]["instances"]
    assert row["reason"] == XSS


# ----- in a real browser --------------------------------------------------------------
@pytest.mark.browser
def test_an_injected_img_onerror_in_a_reason_shows_as_text(console, store, page):
    url, _ = console
    submit(store, job("web"))
    failed_record(store, "web", XSS + " <b>bold</b>")
    page.add_init_script("window.pwned = 0; window.alert = () => { window.pwned = 2; };")
    page.goto(url)
    cell = page.locator("#instances tbody tr", has_text="web-0").locator("td").nth(5)
    cell.wait_for(timeout=10_000)
    assert cell.text_content() == XSS + " <b>bold</b>"
    assert cell.locator("img, b").count() == 0
    assert page.locator("main img").count() == 0
    page.wait_for_timeout(1500)  # a broken image would have fired onerror by now
    assert page.evaluate("window.pwned") == 0


@pytest.mark.browser
def test_actions_from_the_page_need_the_token(console, store, page):
    url, _ = console
    submit(store, job("web", count=2))
    page.goto(url)
    page.locator("#scale-job option[value='web']").wait_for(state="attached", timeout=10_000)
    page.get_by_label("Count").fill("3")
    page.get_by_role("button", name="Scale").click()
    result = page.locator("#action-result")
    result.filter(has_text="refused (401)").wait_for(timeout=10_000)
    assert store.job("web").spec["count"] == 2

    page.get_by_label("Consul ACL token").fill("operator-token")
    page.get_by_role("button", name="Scale").click()
    result.filter(has_text="web: scaled to 3").wait_for(timeout=10_000)
    assert store.job("web").spec["count"] == 3
    page.locator("#jobs tbody tr", has_text="web").locator("td").nth(1).filter(
        has_text="3").wait_for(timeout=10_000)  # the next poll shows the new count


@pytest.mark.browser
def test_the_page_has_landmarks_labelled_controls_and_table_headers(console, store, page):
    url, _ = console
    submit(store, job("web"))
    page.goto(url)
    page.locator("#jobs tbody th", has_text="web").wait_for(timeout=10_000)
    assert [page.locator(tag).count() for tag in ("header", "main", "h1")] == [1, 1, 1]
    unlabelled = page.evaluate("""() => Array.from(
        document.querySelectorAll('input, select, textarea'))
        .filter((e) => e.labels.length === 0).map((e) => e.id)""")
    assert unlabelled == []
    assert page.evaluate("""() => Array.from(document.querySelectorAll('table')).every(
        (t) => t.caption && Array.from(t.tHead.rows[0].cells).every(
            (th) => th.tagName === 'TH' && th.getAttribute('scope') === 'col'))""")
    live = page.locator("[aria-live]").evaluate_all("(es) => es.map((e) => e.id)")
    assert {"summary", "action-result", "explanation"} <= set(live)
    sections = page.locator("main > section").evaluate_all(
        "(es) => es.map((s) => document.getElementById("
        "s.getAttribute('aria-labelledby')).textContent)")
    assert sections == ["Pool", "Jobs", "Actions", "Placement explanation", "Packages",
                        "Events"]
