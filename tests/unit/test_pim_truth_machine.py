"""The stateful property test of PIM for Groups (tests/pim_machine.py): every actor interleaved on a fake clock,
invariants (a) and (b) checked after every step. ``IDSYNC_PIM_EXAMPLES`` raises the example count for a long run."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from tests.pim_machine import PimMachine

EXAMPLES = int(os.environ.get("IDSYNC_PIM_EXAMPLES", "60"))

TestPimTruth = PimMachine.TestCase
TestPimTruth.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
