"""`outage_recovery`: a Graph incident answers a full read of the scale tenant with nobody, then Graph recovers.

After the initial sync, the emulator answers the next full users delta round with no user (its deltaLink
as good as any, as Graph's would be); that full cycle's deletion guard trips. Then, Graph recovered, cycles
run until one plans no deletion (held back or not): ``cycles_to_zero`` counts them (target 1). Last, the
notice's advice is followed (one cycle with deletions allowed). ``deletions`` counts every DeleteUser,
DeleteGroup and DeleteGroupMembership sent from the incident on (target 0); ``held_back`` is how many
deletions the tripped guard named.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench import world
from idsync.model import Action
from idsync.services.cycle import CycleOptions

TARGET_CYCLES = 1
MAX_CYCLES = 10
DELETES = ("DeleteUser", "DeleteGroup", "DeleteGroupMembership")


def measure() -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="idsync-bench-") as folder,
        world.EmulatorProcess(Path(folder)) as emulator,
        world.fake_aws(),
    ):
        engine = world.new_engine(emulator.graph, Path(folder) / "state.db")
        world.run_cycle(engine)
        engine.counters.aws.calls.clear()
        emulator.admin("faults", {"empty_full_delta": "users", "count": 1})
        tripped = world.run_cycle(engine, CycleOptions(force_full=True))
        assert tripped.plan is not None
        if tripped.plan.guard is None:
            raise RuntimeError("the empty full read did not trip the deletion guard")
        cycles = 0
        while True:
            cycles += 1
            outcome = world.run_cycle(engine)
            assert outcome.plan is not None
            planned = sum(1 for op in outcome.plan.operations if op.action is Action.DELETE)
            if planned + len(outcome.plan.held_back) == 0:
                break
            if cycles == MAX_CYCLES:
                break
        world.run_cycle(engine, CycleOptions(allow_deletions=True))
        deletions = sum(engine.counters.aws.calls.get(name, 0) for name in DELETES)
    return {
        "outage_recovery": {
            "cycles_to_zero": cycles,
            "target_cycles_to_zero": TARGET_CYCLES,
            "deletions": deletions,
            "target_deletions": 0,
            "held_back": len(tripped.plan.held_back),
        }
    }


def run() -> dict[str, Any]:
    return world.in_fresh_process(measure)
