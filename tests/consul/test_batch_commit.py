"""walle-batch-commit (roles/node/files), the program a batch unit runs as ExecStopPost=+,
run for real against the Consul stand-in: it records a successful run and nothing else, and
gives up (exit 1: the unit fails and the run is retried) when Consul stays out of reach."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.consul

PROGRAM = Path(__file__).parents[2] / "roles" / "node" / "files" / "walle-batch-commit"
SUCCESS = {"SERVICE_RESULT": "success", "EXIT_CODE": "exited", "EXIT_STATUS": "0"}


def commit(addr: str, key: str, env: dict[str, str], *extra: str, timeout: float = 30):
    argv = [sys.executable, str(PROGRAM), "--consul-addr", addr, "--key", key,
            "--node", "node1", "--attempt", "17.000000", *extra]
    return subprocess.run(argv, env={"PATH": os.environ["PATH"], **env}, timeout=timeout,
                          capture_output=True, text=True, check=False)


def test_a_successful_run_is_recorded(consul_addr, consul_client, unique):
    key = f"walle/done/{unique('etl')}/0"
    done = commit(f"http://{consul_addr}", key, SUCCESS)
    assert done.returncode == 0, done.stderr
    assert f"committed {key}" in done.stdout
    _, entry = consul_client.kv.get(key)
    body = json.loads(entry["Value"])
    assert (body["node"], body["attempt"]) == ("node1", "17.000000")


@pytest.mark.parametrize("env", [
    {"SERVICE_RESULT": "exit-code", "EXIT_CODE": "exited", "EXIT_STATUS": "3"},
    {"SERVICE_RESULT": "success", "EXIT_CODE": "killed", "EXIT_STATUS": "TERM"},  # stopped
    {"SERVICE_RESULT": "signal", "EXIT_CODE": "killed", "EXIT_STATUS": "KILL"},
    {},
])
def test_a_run_that_failed_or_was_stopped_records_nothing(consul_addr, consul_client, unique,
                                                          env):
    key = f"walle/done/{unique('etl')}/1"
    done = commit(f"http://{consul_addr}", key, env)
    assert done.returncode == 0 and "nothing to commit" in done.stdout
    assert consul_client.kv.get(key)[1] is None


def test_consul_out_of_reach_fails_the_unit_within_the_deadline(unique):
    started = time.monotonic()
    done = commit("http://127.0.0.1:9", f"walle/done/{unique('etl')}/0", SUCCESS,
                  "--deadline", "1.5")
    assert done.returncode == 1
    assert "could not record" in done.stderr and "retried" in done.stderr
    assert time.monotonic() - started < 15


def test_a_key_outside_walle_done_is_refused(consul_addr, consul_client, unique):
    key = f"walle/jobs/{unique('web')}"
    done = commit(f"http://{consul_addr}", key, SUCCESS)
    assert done.returncode == 2 and "walle/done/<job>/<slot>" in done.stderr
    assert consul_client.kv.get(key)[1] is None
