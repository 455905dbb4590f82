"""Constraint regexes from jobs: reconcile time with a pathological pattern (prints figures).

    PYTHONPATH=scheduler .venv/bin/python bench/constraint_regex.py [--nodes N] [--groups G]

The pattern of issue 9 item 4 is `(.*)` repeated G times followed by `X`, matched against
node names that never contain an X. With Python's backtracking `re` one reconcile against 3
nodes took 17 s at G=60 (and does not end at G=1000); walle matches job patterns with RE2,
linear in the input. The figures: the reconcile time with RE2 (the code path the leader runs),
and the time of one backtracking `re.search` of the same pattern for comparison (bounded:
it is measured with fewer groups, where it still ends).
"""

from __future__ import annotations

import argparse
import re
import time

from walle.core import reconcile
from walle.core.testing import make_job, make_node
from walle.jobspec.model import Constraint


def reconcile_seconds(nodes: int, groups: int) -> float:
    pool = [make_node(f"node-{k:05d}-{'abcdefgh' * 3}") for k in range(nodes)]
    pattern = "(.*)" * groups + "X"
    job = make_job("web", 3, cpu=(0.1, 0.1), constraints=(Constraint("name", "regex", pattern),))
    start = time.perf_counter()
    plan = reconcile({"web": job}, [], pool, seed=1, now=0)
    elapsed = time.perf_counter() - start
    assert plan.failures and not plan.places  # nothing matches: every node refused
    return elapsed


def backtracking_seconds(groups: int, name: str) -> float:
    pattern = re.compile("(.*)" * groups + "X")
    start = time.perf_counter()
    pattern.search(name)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--groups", type=int, default=60)
    args = parser.parse_args()
    name = f"node-00001-{'abcdefgh' * 3}"
    print(f"RE2 reconcile, {args.nodes} nodes, (.*) x {args.groups} + X: "
          f"{reconcile_seconds(args.nodes, args.groups) * 1000:.1f} ms")
    print(f"RE2 reconcile, 3 nodes, (.*) x 60 + X: {reconcile_seconds(3, 60) * 1000:.1f} ms")
    for groups in (3, 4, 5):
        print(f"python re.search, one {len(name)}-character name, (.*) x {groups} + X: "
              f"{backtracking_seconds(groups, name) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
