"""A cron slot's last runs as its node recorded them (walle-cron-record appends one entry per
attempt to walle/runs/<job>/<slot>; docs/architecture.md "Cron runs").

Written by nodes, so untrusted: only the known fields of the known types are kept, text is
shortened, and an entry or a value of another shape is skipped, never an error. Nothing is
decided from it; `walle status JOB` shows it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

TEXT_LIMIT = 64  # node, result, exit code and status are short systemd words


@dataclass(frozen=True)
class CronRun:
    slot: int
    node: str
    start: float | None  # wall-clock seconds
    end: float | None
    result: str  # systemd's $SERVICE_RESULT: success, exit-code, signal, timeout, ...
    exit_code: str  # $EXIT_CODE: exited, killed, dumped
    exit_status: str  # $EXIT_STATUS: the number, or the signal's name
    attempt: int  # 1 for the timer's start, 2.. for retries
    retry: bool  # whether systemd was left to try it again
    run: str = ""  # concurrency allow: the run's id (its unit walle-<job>-<slot>@<run>.service)

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


def runs_of(slot: int, value: Any) -> list[CronRun]:
    """The entries of one slot's key that have the recorded shape, oldest first."""
    if not isinstance(value, list):
        return []
    return [run for run in (_run(slot, entry) for entry in value) if run is not None]


def job_runs(stored: Mapping[int, Any]) -> list[CronRun]:
    """Every slot's runs (StateStore.cron_runs), ordered by when they ended."""
    runs = [run for slot, value in stored.items() for run in runs_of(slot, value)]
    return sorted(runs, key=lambda r: (r.end or 0.0, r.slot))


def _run(slot: int, entry: Any) -> CronRun | None:
    if not isinstance(entry, Mapping):
        return None
    attempt = entry.get("attempt")
    if isinstance(attempt, bool) or not isinstance(attempt, int):
        return None
    return CronRun(slot=slot, node=_text(entry.get("node")), start=_time(entry.get("start")),
                   end=_time(entry.get("end")), result=_text(entry.get("result")),
                   exit_code=_text(entry.get("exit_code")),
                   exit_status=_text(entry.get("exit_status")), attempt=attempt,
                   retry=entry.get("retry") is True, run=_text(entry.get("run")))


def _text(value: Any) -> str:
    return value[:TEXT_LIMIT] if isinstance(value, str) else ""


def _time(value: Any) -> float | None:
    """Seconds since 1970, within what a clock can show (a node could write 1e308)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e11:
        return None
    return float(value)
