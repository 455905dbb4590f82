"""GPUs one by one: which of a node's GPUs (indices 0..capacity.gpus-1, the minor numbers of
/dev/nvidia<i>) each instance may open. Pure.

Feasibility counts GPUs (core/feasibility.py); this picks the indices once a round has
decided who holds a node, so the two can never disagree: every node's holders ask for at
most `capacity.gpus` GPUs in all. An instance keeps its indices for as long as it stays on
its node (a new leader reads them from the slot record). New holders take the lowest free
indices, avoiding first those of instances that are moving off the node: a graceful move or
replace keeps the old instance running until the new one passes its checks, so its GPUs are
taken last (only when the node has no other free GPU, as the count-based room allowed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def assign(total: int, holders: Mapping[str, int], kept: Mapping[str, tuple[int, ...]],
           leaving: Iterable[int] = ()) -> dict[str, tuple[int, ...]]:
    """Indices for every holder of one node: holder key -> GPUs it asks for (`holders`),
    what holders already have (`kept`: used when it is still a valid, unshared set of the
    right size) and the indices of instances leaving the node (taken last)."""
    out: dict[str, tuple[int, ...]] = {}
    taken: set[int] = set()
    for key in sorted(holders):
        have = tuple(sorted(set(kept.get(key, ()))))
        if len(have) == holders[key] and all(0 <= i < total and i not in taken for i in have):
            out[key] = have
            taken.update(have)
    soft = set(leaving)
    for key in sorted(k for k in holders if k not in out):
        free = [i for i in range(total) if i not in taken]
        free.sort(key=lambda i: (i in soft, i))
        picked = tuple(sorted(free[:holders[key]]))
        out[key] = picked
        taken.update(picked)
    return out
