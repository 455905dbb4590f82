"""Reading what runs on a node (executor.list_instances) and what a batch unit did."""

from __future__ import annotations

from walle.naming import parse_unit, service_unit, timer_unit
from walle.service.batches import batch_progress
from walle.service.executor import parse_instance_listing


def test_unit_names_map_back_to_their_instance():
    assert parse_unit(service_unit("my-web", 3)) == ("my-web", 3)
    assert parse_unit(timer_unit("tick", 0)) == ("tick", 0)
    # the runs of a concurrency: allow cron slot are instances of its template
    assert parse_unit("walle-my_tick-2@20261202T101500-41.service") == ("my-tick", 2)
    for other in ("walle-web.slice", "walle.slice", "sshd.service", "walle-web-x.service",
                  "walle--1.service", "walle-web-0.socket", "walle-tick-0@.service",
                  "walle-tick-0@r.timer", "walle-tick-0@a@b.service", "walle-tick-x@r.service",
                  "walle-tick-0-launch.service"):
        assert parse_unit(other) is None


def test_a_listing_gives_manifests_and_loaded_walle_units():
    out = ("web-0.json\nnotes.txt\n--\n"
           "walle-web-0.service loaded active running walle web slot 0\n"
           "walle-web.slice loaded active active slice\n"
           "walle-tick-1.timer loaded active waiting walle tick\n"
           "walle-etl-2.service loaded failed failed walle etl\n"
           "walle-gone-2.service not-found inactive dead walle-gone-2.service\n"
           "walle-tock-3@20261202T101500-41.service loaded active running a run\n")
    listing = parse_instance_listing(out)
    assert listing.manifests == {"web-0"}
    assert listing.units == {"walle-web-0.service": "active", "walle-tick-1.timer": "active",
                             "walle-etl-2.service": "failed",
                             "walle-tock-3@20261202T101500-41.service": "active"}
    assert listing.instance_ids() == {"web-0", "tick-1", "etl-2", "tock-3"}
    assert parse_instance_listing("--\n").instance_ids() == set()


def test_batch_progress_tells_an_unloaded_finished_unit_from_one_never_started():
    unloaded = {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0",
                "InactiveExitTimestampMonotonic": "0"}
    assert batch_progress(unloaded, ran=False) == ("absent", "")
    assert batch_progress(unloaded, ran=True) == ("done", "")
    loaded = dict(unloaded, InactiveExitTimestampMonotonic="123")
    assert batch_progress(loaded, ran=False) == ("done", "")
    assert batch_progress({"ActiveState": "activating"}, ran=False) == ("running", "")
    state, reason = batch_progress({"ActiveState": "failed", "Result": "exit-code",
                                    "ExecMainStatus": "3"}, ran=False)
    assert state == "failed" and "exit-code" in reason and "3" in reason


def test_a_batch_unit_with_no_unit_file_never_ran_whatever_else_is_assumed():
    """systemctl show of a unit whose file is not on the node reads inactive, success, status
    0: with `ran` assumed it once read as done (chaos-b2, 2026-12-02)."""
    missing = {"LoadState": "not-found", "ActiveState": "inactive", "Result": "success",
               "ExecMainStatus": "0", "InactiveExitTimestampMonotonic": "0"}
    assert batch_progress(missing, ran=True) == ("absent", "")


def test_a_batch_run_that_remains_after_exit_reads_done_even_without_a_manifest():
    """Chaos: the leader was killed inside place.yml after the unit started and before the
    manifest was written; the run finished. RemainAfterExit keeps it active (exited), so the
    next leader records it instead of running it again."""
    exited = {"ActiveState": "active", "SubState": "exited", "Result": "success",
              "ExecMainStatus": "0", "InactiveExitTimestampMonotonic": "123"}
    assert batch_progress(exited, ran=False) == ("done", "")
    state, reason = batch_progress(dict(exited, Result="exit-code", ExecMainStatus="2"),
                                   ran=False)
    assert state == "failed" and "2" in reason
    assert batch_progress(dict(exited, SubState="running"), ran=False) == ("running", "")
