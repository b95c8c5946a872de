"""PIM for Groups end to end on this machine: an activation in the Graph emulator -> change notification ->
webhook over HTTP -> SQS (moto) -> worker -> IAM Identity Center (moto); then the grant's end -> the
one-time schedule (moto) -> expiry -> the membership removed."""

from __future__ import annotations

from collections.abc import Callable

from idsync.config import Settings
from idsync.services.cycle import CycleOptions
from idsync.wiring import build_engine
from sandbox.graph_emulator import GraphEmulator
from sandbox.jit_local import LocalJit
from sandbox.tenant import Tenant
from tests.e2e.conftest import IdentityCenter
from tests.fakes import FakeClock

PIM_GROUP = "AWS PIM Production Admin"


def test_an_activation_is_applied_in_seconds_and_removed_at_its_end(
    tenant: Tenant,
    emulator: GraphEmulator,
    clock: FakeClock,
    make_settings: Callable[..., Settings],
    identity_center: IdentityCenter,
) -> None:
    # Given the PIM group provisioned by a sync cycle, and a user Identity Center does not hold yet
    group = next(g for g, obj in tenant.groups.items() if obj["displayName"] == PIM_GROUP)
    settings = make_settings(pim={"groups": [group]})
    engine = build_engine(settings, clock=clock)
    assert engine.cycle.run(CycleOptions()).report is not None
    owned = engine.state.load_ownership().users
    user = next(
        u
        for u, obj in tenant.users.items()
        if obj.get("accountEnabled", True) and u not in tenant.expected_refusals and u not in owned
    )
    upn = tenant.users[user]["userPrincipalName"]
    assert upn not in identity_center.users()
    # Entra drops the member some time after the end: the expiry must not wait for that
    emulator.app.pim.auto_expire = False

    with LocalJit(emulator, settings, clock=clock, state=engine.state) as jit:
        # When the user activates for an hour
        jit.activate(group, user, minutes=60)
        applied = jit.wait_applied(group, user, timeout=20)

        # Then Identity Center holds the user and the membership, applied after Graph's notification
        assert upn in identity_center.members(PIM_GROUP)
        assert applied.present_at >= applied.notified_at

        # When the hour has passed
        clock.advance(61 * 60)
        jit.wait_removed(group, user, timeout=20)

        # Then the scheduled expiry removed the membership; the user stays provisioned for the sync cycle to judge
        assert upn not in identity_center.members(PIM_GROUP)
        assert upn in identity_center.users()
        assert [(f.event["user_id"], f.result["removals"] if f.result else f.error) for f in jit.wait_fired(1)] == [
            (user, [user])
        ]
        assert jit.errors == []
