"""``python -m sandbox.latency_run MODULE [ARG ...]``: run MODULE as ``python -m MODULE`` would, its IAM Identity
Center calls slowed and throttled by ``sandbox.aws_latency`` as the environment asks (the demo's hook; the
product never imports it).

``IDSYNC_SANDBOX_LATENCY_MS``: the median latency of a call (default 0); ``IDSYNC_SANDBOX_AWS_RATE``: calls a
second above which the service answers ThrottlingException (default: none), with a second's worth of burst;
``IDSYNC_SANDBOX_LATENCY_STATS``: a file to which the process appends its ``LayerStats`` as one JSON line when
it exits. Without the first two, MODULE runs untouched.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sandbox.aws_latency import LatencyLayer, attach_to_new_clients

LATENCY_MS = "IDSYNC_SANDBOX_LATENCY_MS"
AWS_RATE = "IDSYNC_SANDBOX_AWS_RATE"
STATS = "IDSYNC_SANDBOX_LATENCY_STATS"


def layer_from(env: Mapping[str, str]) -> LatencyLayer | None:
    """The layer ``env`` asks for, or None when it asks for none. Raises ValueError for a value out of range."""
    if not env.get(LATENCY_MS) and not env.get(AWS_RATE):
        return None
    median = float(env.get(LATENCY_MS) or 0) / 1000.0
    rate = float(env[AWS_RATE]) if env.get(AWS_RATE) else None
    # AWS meters a second's worth of calls: the bucket holds as many tokens as the rate
    burst = max(1, int(rate)) if rate else 1
    return LatencyLayer(median=median, rate=rate, burst=burst, seed=os.getpid())


def write_stats(layer: LatencyLayer, path: Path, command: Iterable[str]) -> None:
    """Append ``layer``'s figures to ``path`` as one JSON line."""
    line = json.dumps({"pid": os.getpid(), "command": list(command), **layer.stats.as_dict()})
    with path.open("a", encoding="utf-8") as out:
        out.write(line + "\n")


def read_stats(path: Path) -> dict[str, Any]:
    """The sum of every line ``write_stats`` appended to ``path`` (zeros when there is none)."""
    total: dict[str, Any] = {"processes": 0, "calls": 0, "throttled": 0, "waited": 0.0}
    if not path.exists():
        return total
    for line in path.read_text(encoding="utf-8").splitlines():
        figures = json.loads(line)
        total["processes"] += 1
        for key in ("calls", "throttled", "waited"):
            total[key] += figures[key]
    total["waited"] = round(total["waited"], 3)
    return total


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m sandbox.latency_run MODULE [ARG ...]")
    layer = layer_from(os.environ)
    if layer is not None:
        attach_to_new_clients(layer)
        if os.environ.get(STATS):
            atexit.register(write_stats, layer, Path(os.environ[STATS]), argv)
    sys.argv = list(argv)
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
