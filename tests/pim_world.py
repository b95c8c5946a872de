"""A whole PIM for Groups world on in-memory fakes: Entra (members, instances, users), IAM Identity Center, the
state store with its grants and leases, the expiry scheduler, the token bucket, the JIT service and a sync
cycle wired to it exactly as ``wiring.build_engine`` wires them. Shared by the scenario tests, the stateful
property test and the ``jit`` benchmark's race figures."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from idsync.config import MappingSettings, ScopeSettings
from idsync.errors import DirectoryError, SchedulerError, StateError
from idsync.mapping import build_mappers
from idsync.model import PlanPolicy
from idsync.ports import DirectoryChanges
from idsync.scope import build_scope
from idsync.services.cycle import CycleOptions, CycleOutcome, CycleService, Scoping
from idsync.services.jit import JitOutcome, JitService
from idsync.services.token_bucket import BucketPolicy, Grant, TokenBucket, Wait
from sandbox.jit_local import MemoryBucketStore
from tests.fakes import FakeClock, FakeIdentityStore, FakePimGraph, FakeScheduler, FakeSource, JitState

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
GROUP = "0e6a1f3c-8d2b-4a7e-b5c9-2f4d6e8a0b1c"
GROUP_NAME = "AWS PIM Production Admin"
PEOPLE = {
    "6d1e3f5a-7b9c-4d2e-8f0a-3c5e7a9b1d2f": "Ada Lovelace",
    "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d": "Bob Dylan",
    "2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e": "Carol Shaw",
    "3c4d5e6f-7a8b-4c9d-0e1f-2a3b4c5d6e7f": "Dan Bricklin",
}
ADA, BOB, CAROL, DAN = PEOPLE


class CountingBucket(TokenBucket):
    """The real token bucket, counting tokens taken and given back."""

    taken = 0
    given_back = 0

    def try_take(self, waiter: str | None = None) -> Grant | Wait:
        result = super().try_take(waiter)
        if isinstance(result, Grant):
            self.taken += 1
        return result

    def give_back(self) -> bool:
        returned = super().give_back()
        self.given_back += int(returned)
        return returned


class LinkedSource(FakeSource):
    """The cycle's view of Entra, read from the same ``FakePimGraph`` the JIT path reads (so both see one
    tenant); ``after_read`` runs once right after a read (another writer acting while the cycle plans)."""

    def __init__(self, graph: FakePimGraph, assigned_groups: set[str]) -> None:
        super().__init__(groups=[{"id": GROUP, "displayName": GROUP_NAME}], assigned_groups=assigned_groups)
        self.graph = graph
        self.after_read: Callable[[], None] | None = None

    def read_changes(self, links: Mapping[str, str] | None) -> DirectoryChanges:
        self.graph.answer(counted=False)
        self.users = [dict(u) for u in self.graph.users.values()]
        self.members = {GROUP: sorted(self.graph.listed.get(GROUP, set()))}
        changes = super().read_changes(links)
        hook, self.after_read = self.after_read, None
        if hook is not None:
            hook()
        return changes


class PimWorld:
    """Everything, on one fake clock. ``scope``: ScopeSettings as a dict; ``assigned``: only members of the PIM
    group are in the cycle's scope (Entra's "assigned users and groups")."""

    def __init__(
        self,
        scope: dict[str, Any] | None = None,
        assigned: bool = False,
        settle_minutes: float = 10,
        call_seconds: float | None = None,
    ) -> None:
        self.clock = FakeClock(T0)
        self.graph = FakePimGraph(GROUP)
        for user_id, name in PEOPLE.items():
            self.graph.add_user(user_id, name, department="Engineering")
        self.identity = FakeIdentityStore()
        self.state = JitState()
        self.scheduler = FakeScheduler()
        self.bucket_store = MemoryBucketStore()
        self.policy = BucketPolicy()
        self.bucket = CountingBucket(self.bucket_store, self.clock, self.policy)
        user_mapper, group_mapper = build_mappers(MappingSettings())
        rules = build_scope(ScopeSettings.model_validate(scope or {"mode": "all"}))
        self.jit = JitService(
            self.graph,
            self.identity,
            self.state,
            self.state,
            self.bucket,
            self.scheduler,
            user_mapper,
            rules,
            self.clock,
            [GROUP],
            settle=timedelta(minutes=settle_minutes),
            call_seconds=call_seconds,  # None, as deployed: keep renews before every external call
        )
        self.source = LinkedSource(self.graph, {GROUP} if assigned else set())
        self.cycle_service = CycleService(
            self.source,
            self.identity,
            self.state,
            user_mapper,
            group_mapper,
            rules,
            Scoping("assigned" if assigned else "all", False),
            PlanPolicy(allow_deletions=True),
            self.clock,
            pim=self.jit,
        )
        self.fired: list[JitOutcome] = []
        self.lost_expiries: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ actors

    def look(self) -> JitOutcome:
        return self.jit.look(GROUP)

    def cycle(self, full: bool = False) -> CycleOutcome:
        return self.cycle_service.run(CycleOptions(force_full=full))

    def fire_due(self) -> list[JitOutcome]:
        """EventBridge Scheduler: every due schedule fires once (and is deleted) into the expiry function, whose
        failed invocation Lambda retries twice; an event that fails all three is lost (``lost_expiries``)."""
        outcomes = []
        for schedule in self.scheduler.due(self.clock.now()):
            event = self.scheduler.fire(schedule)
            for attempt in range(3):
                try:
                    outcomes.append(self.jit.expire(*event))
                    break
                except (DirectoryError, StateError, SchedulerError):
                    if attempt == 2:
                        self.lost_expiries.append(event)
        self.fired.extend(outcomes)
        return outcomes

    # ------------------------------------------------------------------ what IAM Identity Center holds

    def user_name(self, user_id: str) -> str:
        return str(self.graph.users[user_id]["userPrincipalName"])

    def is_member(self, user_id: str) -> bool:
        group = self.identity.find_group(GROUP_NAME)
        user = self.identity.find_user(self.user_name(user_id))
        return group is not None and user is not None and self.identity.find_membership(group, user) is not None

    def target_id(self, user_id: str) -> str | None:
        return self.identity.find_user(self.user_name(user_id))

    def phase(self, user_id: str) -> str | None:
        record = self.state.grant(GROUP, user_id)
        return record.phase if record is not None else None

    def tokens_spent(self) -> int:
        """Tokens taken and not given back."""
        return self.bucket.taken - self.bucket.given_back
