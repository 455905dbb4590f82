"""naming.py builds and parses every name: each parser inverts its builder and refuses the
other shapes, and the adapters, the CLI and the core use these (issue 10 item 5)."""

from __future__ import annotations

import pytest

from walle import naming


@pytest.mark.parametrize(("job", "slot"), [("web", 0), ("my-web", 12), ("a-b-c", 3)])
def test_instance_names_round_trip(job, slot):
    assert naming.parse_instance_id(naming.instance_id(job, slot)) == (job, slot)
    assert naming.parse_unit(naming.service_unit(job, slot)) == (job, slot)
    assert naming.parse_unit(naming.timer_unit(job, slot)) == (job, slot)
    assert naming.parse_alloc_key(naming.alloc_key(job, slot)) == (job, slot)
    assert naming.alloc_key(job, slot).startswith(naming.job_allocs_prefix(job))
    assert naming.parse_job_key(naming.job_key(job)) == job


def test_kv_keys_have_their_documented_shape():
    assert naming.job_key("web") == "walle/jobs/web"
    assert naming.alloc_key("web", 2) == "walle/allocs/web/2"
    assert naming.drain_key("node1") == "walle/nodes/node1/drain"
    assert naming.tombstone_key("web") == "walle/stopped/web"
    assert naming.package_key("kvstore") == "walle/packages/kvstore"
    assert naming.secret_key("db/password") == "walle/secrets/db/password"
    assert naming.LEADER_KEY == "walle/leader"


@pytest.mark.parametrize(("parse", "key"), [
    (naming.parse_alloc_key, "walle/allocs/web"),
    (naming.parse_alloc_key, "walle/allocs/web/x"),
    (naming.parse_alloc_key, "walle/allocs/a/b/1"),
    (naming.parse_alloc_key, "walle/jobs/web"),
    (naming.parse_job_key, "walle/jobs/"),
    (naming.parse_job_key, "walle/jobs/web/extra"),
    (naming.parse_drain_key, "walle/nodes/node1/other"),
    (naming.parse_drain_key, "walle/nodes//drain"),
    (naming.parse_package_key, "walle/packages/a/b"),
])
def test_other_shapes_are_not_names(parse, key):
    assert parse(key) is None


def test_parsers_read_back_what_they_build():
    assert naming.parse_drain_key(naming.drain_key("node-7")) == "node-7"
    assert naming.parse_package_key(naming.package_key("kv-app")) == "kv-app"


def test_the_state_adapter_uses_these_keys():
    from walle.adapters.consul import secrets, state, tombstones

    assert state.job_key is naming.job_key
    assert state.alloc_key is naming.alloc_key
    assert state.drain_key is naming.drain_key
    assert state.parse_alloc_key is naming.parse_alloc_key
    assert tombstones.tombstone_key is naming.tombstone_key
    assert secrets.secret_key is naming.secret_key
