"""`walle validate FILE... [--json]`: check job specs without touching the cluster."""

from __future__ import annotations

import argparse
import json
import sys

from walle.cli.main import add_json_arg
from walle.jobspec import JobSpec, SpecError, load_spec_file
from walle.service.policy import policy_notes

EXIT_OK, EXIT_INVALID = 0, 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate", help="check job spec files and report every problem",
        description="Check job spec files (YAML or JSON). Exit 0 when all are valid, 2 if not.")
    parser.add_argument("files", nargs="+", metavar="FILE", help="job spec file")
    add_json_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    results = [check_file(path) for path in args.files]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print_result(result)
    return EXIT_OK if all(r["ok"] for r in results) else EXIT_INVALID


def check_file(path: str) -> dict:
    """One file's result: {file, ok, problems: [{path, message}]} plus name/kind/digest if ok."""
    try:
        spec: JobSpec = load_spec_file(path)
    except SpecError as exc:
        problems = [{"path": p.path, "message": p.message} for p in exc.problems]
        return {"file": path, "ok": False, "problems": problems}
    return {"file": path, "ok": True, "problems": [], "kind": spec.kind, "name": spec.name,
            "digest": spec.digest(), "notes": policy_notes(spec)}


def print_result(result: dict) -> None:
    if result["ok"]:
        print(f"ok {result['file']} ({result['kind']} {result['name']}, "
              f"digest {result['digest']})")
        for note in result["notes"]:
            print(f"  note: {note['path']}: {note['message']}")
        return
    for problem in result["problems"]:
        print(f"{result['file']}: {problem['path']}: {problem['message']}", file=sys.stderr)
