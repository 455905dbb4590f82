"""Dynamic ports one by one: which port of its node's range each labelled port of an instance
gets (the job's `ports` without `static`). Pure.

Feasibility counts ports (core/state.py keeps how much of each node's range is held, and a
static port already held on a node refuses it); this picks the numbers once a round has
decided who holds a node, so the two can never disagree. Mirrors core/gpus.py: an instance
keeps its ports for as long as it stays on its node (a new leader reads them from the slot
record); static ports of every holder are never handed out; ports of instances moving off
the node (a graceful move or replace keeps the old instance bound until the new one passes
its checks) are taken last. A new port starts at a place of the range derived from the seed
and the instance, so ports are spread over the range and a port just given back is not at
once someone else's (a stale DNS answer then finds nothing rather than the wrong service):
deterministic for a given seed, like everything in the core.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping

Assigned = tuple[tuple[str, int], ...]  # (label, port), sorted by label: the slot record's


def assign(port_range: tuple[int, int], holders: Mapping[str, tuple[str, ...]],
           kept: Mapping[str, Assigned], fixed: Iterable[int] = (),
           leaving: Iterable[int] = (), seed: int = 0) -> dict[str, Assigned]:
    """Ports for every holder of one node: holder key -> the labels it needs a port for
    (`holders`), what holders already have (`kept`: used when it covers exactly those labels
    with ports nobody else holds), the static ports held on the node (`fixed`, never handed
    out) and the ports of instances leaving the node (taken last). A holder the range has no
    room for is left out (feasibility counted the range, so that happens only when the
    recorded state already had two holders of one port)."""
    out: dict[str, Assigned] = {}
    taken = set(fixed)
    for key in sorted(holders):
        have = dict(kept.get(key, ()))
        ports = list(have.values())
        if set(have) == set(holders[key]) and len(set(ports)) == len(ports) and \
                all(1 <= p <= 65535 and p not in taken for p in ports):
            out[key] = tuple(sorted(have.items()))
            taken.update(ports)
    low, high = port_range
    soft = set(leaving)
    for key in sorted(k for k in holders if k not in out):
        picked = {}
        for label in sorted(holders[key]):
            start = zlib.crc32(f"{seed}/{key}/{label}".encode()) % (high - low + 1)
            port = _free(low, high, start, taken | soft) or _free(low, high, start, taken)
            if port is None:
                break
            picked[label] = port
            taken.add(port)
        else:
            out[key] = tuple(sorted(picked.items()))
    return out


def _free(low: int, high: int, start: int, taken: set[int]) -> int | None:
    """The first port of low..high not in `taken`, from low+start on, wrapping around."""
    size = high - low + 1
    for step in range(size):
        port = low + (start + step) % size
        if port not in taken:
            return port
    return None

