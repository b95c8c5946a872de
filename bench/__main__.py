"""Run every benchmark (or the ones named), print the figures, and save them into bench/results.json
(figures of benchmarks not run this time are kept)."""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import time
from pathlib import Path
from typing import Any

BENCHMARKS = [
    "mapping",
    "full_sync",
    "cycles",
    "jit",
    "outage",
    "access",
    "api_limit",
    "full_reconcile",
    "scale",
]
RESULTS = Path(__file__).with_name("results.json")


def main() -> None:
    parser = argparse.ArgumentParser(description="idsync benchmarks")
    parser.add_argument("names", nargs="*", help=f"which to run (default: all of {', '.join(BENCHMARKS)})")
    args = parser.parse_args()
    names = args.names or BENCHMARKS
    results: dict[str, Any] = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else {}
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        started = time.perf_counter()
        print(f"== {name} ...", flush=True)
        figures = module.run()
        for key, value in figures.items():
            results[key] = value
            print(f"{key}: {json.dumps(value, indent=2)}", flush=True)
        print(f"== {name} took {time.perf_counter() - started:.1f} s", flush=True)
    _fold_full_reconcile(results)
    results["machine"] = {"python": platform.python_version(), "machine": platform.machine(), "cpus": _cpus()}
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"saved {RESULTS}")


def _fold_full_reconcile(results: dict[str, Any]) -> None:
    """The full reconcile's figures at 100k (measured by ``full_reconcile``) shown with the ``scale`` figures."""
    full, scale = results.get("full_reconcile"), results.get("scale")
    if not full or scale is None:
        return
    scale["full_reads"] = full["full_reads"]["total"]
    scale["full_reads_by_operation"] = {k: v for k, v in full["full_reads"].items() if k != "total"}
    scale["full_read_seconds_at_limit"] = full["full_read_seconds_at_limit"]
    scale["full_graph_requests"] = full["graph_requests"]
    scale["full_invocations"] = full["invocations"]
    scale["full_invocation_budget_seconds"] = full["invocation_budget_seconds"]
    spread = full["drift_check"]["spread_over_full_reconcile_hours"]
    scale["drift_check_spread_calls_per_cycle"] = spread["calls_per_cycle"]
    scale["drift_check_spread_calls_per_day"] = spread["calls_per_day"]
    built = full["drift_check"].get("built")
    if built:
        scale["drift_check_built_calls_per_cycle"] = built["calls_per_cycle"]
        scale["drift_check_built_calls_per_day"] = built["calls_per_day"]


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
