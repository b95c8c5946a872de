"""The PIM world as a hypothesis state machine: every actor interleaved on one fake clock, two invariants
checked after every step (and at every event inside a clock advance).

(a) nobody is a member of the PIM group later than the end of her last entitlement (an instance's end, or
    the moment Graph stops listing a permanent member: nothing else tells of that end) plus one cycle interval;
(b) nobody holding an active member instance loses a membership that was applied during that same
    continuous stretch of instances, unless the removal was already sent to AWS when the stretch began (she
    deactivated and activated again while it was on its way: her new activation's hint re-adds her).

Entra is modelled as it fails: Graph's member list keeps a user for up to ``MAX_LAG`` after her instances end
(longer than the rule's ``SETTLE``; ``SIGHTED_MAX_LAG`` for a deactivation idsync never saw, which leaves no
trace), keeps showing an instance that ran out (until its instance list catches up, which may be before the
member list does), lists a user before her instance is visible, and is unreachable for a while; notifications
are lost, duplicated or replayed, schedules fire early, late or twice (and are deleted once fired), the
Identity Store refuses one user, the scheduler refuses a call, a state write is throttled, a lease race is
lost, a writer stalls past its lease (while reading, or with a state write on its way), Identity Center's
writes take as long as the JIT client allows, a cycle runs out of time, idsync is paused and resumed, and a worker and
a cycle run inside each other's reads. The scheduled sync cycle runs every ``CYCLE`` (delta,
and every fourth one full) and the PIM poller every ``POLL`` (and at any other moment); a hint that waited (for a
token, or after a failed look; the worker's, or one the poller handed to the queue) comes back when due.
While Graph is unreachable and for one cycle after, (a) is not checked and a lost membership is no breach
of (b): the cycle then fails closed (ends access whose recorded grant ended) and re-adds once Graph answers.
``PimMachine.strict`` False counts violations instead of failing (the benchmark runs it at scale).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from idsync.adapters.identitystore import JIT_CALL_SECONDS
from idsync.errors import DirectoryError, SchedulerError, StateError
from idsync.ports import GRANT_SIGHTED, Hint
from idsync.services.control import pause, resume
from idsync.services.cycle import CycleOptions
from idsync.services.jit import LEASE_SECONDS
from idsync.services.poller import PimPoller
from tests.pim_world import GROUP, PEOPLE, PimWorld

USERS = list(PEOPLE)
CYCLE = timedelta(minutes=10)
SETTLE = timedelta(minutes=10)
MAX_LAG = timedelta(minutes=25)  # longer than SETTLE: time alone must never re-admit an ended activation
SIGHTED_MAX_LAG = timedelta(minutes=5)  # the rule's assumption for activations idsync never saw (< SETTLE)
POLL = timedelta(minutes=1)
RETRY = timedelta(seconds=30)  # a look that failed comes back (SQS visibility timeout)


class Instance:
    def __init__(self, instance_id: str, user: str, start: datetime, end: datetime | None) -> None:
        self.id, self.user, self.start, self.end = instance_id, user, start, end

    def active_at(self, now: datetime) -> bool:
        return self.start <= now and (self.end is None or self.end > now)


class PimMachine(RuleBasedStateMachine):
    strict: ClassVar[bool] = True
    violations: ClassVar[list[str]] = []
    steps: ClassVar[int] = 0  # rules run
    checks: ClassVar[int] = 0  # invariant checks (after every rule, and at every event inside one)

    def __init__(self) -> None:
        super().__init__()
        self.world = PimWorld(assigned=True, settle_minutes=SETTLE.total_seconds() / 60)
        self.ids = itertools.count(1)
        self.truth: dict[str, Instance] = {}
        self.permanent: set[str] = set()
        self.permanent_until: dict[str, datetime] = {}
        self.lag: dict[str, datetime] = {}  # Graph still lists the user until then
        self.applied_in: dict[str, datetime] = {}  # user -> start of the stretch in which she was applied
        self.sent_before: dict[str, datetime | None] = {}  # a removal sent before her stretch began: not (b)
        self.next_cycle = self.now + CYCLE
        self.cycles = 0
        self.pending_hint: datetime | None = None
        self.graph_back: datetime | None = None  # Graph is unreachable until then
        self.recovered_at: datetime | None = None
        self.next_poll = self.now + POLL
        self.poller = PimPoller(self.world.jit, self)

    # ports.HintRetry, for the poller: a look that waits is handed to the queue, due when its wait ends
    def delay(self, receipt_handle: str, seconds: int) -> None:
        raise AssertionError("the poller holds no received message")

    def resend(self, hint: Hint, seconds: int) -> None:
        self._hint_at(self.now + timedelta(seconds=seconds))

    @property
    def now(self) -> datetime:
        return self.world.clock.now()

    @initialize()
    def provision(self) -> None:
        self.world.cycle()

    # ------------------------------------------------------------------ Entra

    @rule(
        user=st.sampled_from(USERS),
        minutes=st.sampled_from([5, 30, 60, 120, None]),
        hints=st.sampled_from([0, 1, 2]),
    )
    def activate(self, user: str, minutes: int | None, hints: int) -> None:
        """An activation (or a permanent ``assigned`` instance); its notification lost, delivered or duplicated."""
        instance_id = f"i{next(self.ids)}"
        kind = "assigned" if minutes is None else "activated"
        made = self.world.graph.grant(instance_id, user, self.now, minutes, assignment_type=kind)
        self.truth[instance_id] = Instance(instance_id, user, self.now, made.end)
        self.lag.pop(user, None)
        for _ in range(hints):
            self._look()

    @rule(data=st.data(), lag=st.integers(0, int(MAX_LAG.total_seconds())), hint=st.booleans())
    def deactivate(self, data: st.DataObject, lag: int, hint: bool) -> None:
        """An early deactivation (or an admin removal): the instance ends now and disappears from Graph, which
        unlists her ``lag`` s later."""
        active = [i for i in self.truth.values() if i.active_at(self.now)]
        if not active:
            return
        instance = data.draw(st.sampled_from(sorted(active, key=lambda i: i.id)))
        self.world.graph.end(instance.id, unlist=False)
        instance.end = self.now
        self._lag(instance.user, self.now + self._ended_lag(instance.user, lag))
        if hint:
            self._look()

    @rule()
    def graph_drops_ended_instances(self) -> None:
        """Graph's instance list catches up: the instances that ran out disappear, while its member list may
        still lag. One idsync recorded nothing for is kept while Graph lists her (the listing would then be
        indistinguishable from a permanent member: the rule relies on idsync looking meanwhile)."""
        graph, listed = self.world.graph, self.world.graph.listed.get(GROUP, set())
        for instance in [i for i in graph.current if i.end is not None and i.end <= self.now]:
            record = self.world.state.grant(GROUP, instance.principal_id)
            if (record is not None and record.phase != GRANT_SIGHTED) or instance.principal_id not in listed:
                graph.current.remove(instance)

    @rule(data=st.data(), minutes=st.sampled_from([15, 60]))
    def extend(self, data: st.DataObject, minutes: int) -> None:
        """An extension: the instance's end moves; no notification (no member change)."""
        active = [i for i in self.truth.values() if i.active_at(self.now) and i.end is not None]
        if not active:
            return
        instance = data.draw(st.sampled_from(sorted(active, key=lambda i: i.id)))
        self.world.graph.extend(instance.id, minutes)
        assert instance.end is not None
        instance.end += timedelta(minutes=minutes)

    @rule(user=st.sampled_from(USERS))
    def make_permanent(self, user: str) -> None:
        self.world.graph.listed.setdefault(GROUP, set()).add(user)
        self.permanent.add(user)
        self.lag.pop(user, None)

    @rule(user=st.sampled_from(USERS), lag=st.integers(0, int(MAX_LAG.total_seconds())))
    def remove_permanent(self, user: str, lag: int) -> None:
        if user not in self.permanent:
            return
        self.permanent.discard(user)
        # a permanent membership has no instance: its end is visible only once Graph stops listing her
        self.permanent_until[user] = self.now + timedelta(seconds=lag)
        self._lag(user, self.now + timedelta(seconds=lag))

    # ------------------------------------------------------------------ idsync's actors

    @rule()
    def replayed_notification(self) -> None:
        self._look()

    @rule(full=st.booleans())
    def extra_cycle(self, full: bool) -> None:
        self._cycle(full)

    @rule()
    def cycle_out_of_time(self) -> None:
        """A cycle whose time budget is spent before its own work is done."""
        with contextlib.suppress(DirectoryError, StateError):
            self.world.cycle_service.run(CycleOptions(should_stop=lambda: True))

    @rule(on=st.booleans())
    def pause_or_resume(self, on: bool) -> None:
        if on:
            pause(self.world.state, self.now, "incident", "ops")
        else:
            resume(self.world.state)

    @rule(minutes=st.integers(1, 30))
    def graph_unreachable(self, minutes: int) -> None:
        """Graph answers HTTP 503 to every read for ``minutes``."""
        self.world.graph.down = True
        self.graph_back = max(self.graph_back or self.now, self.now + timedelta(minutes=minutes))

    @rule()
    def state_write_throttled(self) -> None:
        """The next membership record write fails (DynamoDB throttling after retries), inside a look."""
        state = self.world.state

        def throttled(membership: object) -> None:
            del state.record_membership
            raise StateError("ProvisionedThroughputExceededException")

        state.record_membership = throttled  # type: ignore[assignment,method-assign]
        try:
            self._look()
        finally:
            state.__dict__.pop("record_membership", None)

    @rule(user=st.sampled_from(USERS), minutes=st.sampled_from([30, 60]))
    def writer_stalls_past_its_lease(self, user: str, minutes: int) -> None:
        """A look stalls after reading (longer than its lease); meanwhile the user activates and another look
        applies it. The stalled writer must not write what it read."""
        state = self.world.state
        original = state.owned_memberships

        def stalled(group_id: str) -> object:
            del state.owned_memberships
            self.world.clock.current += timedelta(seconds=LEASE_SECONDS + 1)
            self.activate(user, minutes, 1)
            return original(group_id)

        state.owned_memberships = stalled  # type: ignore[assignment,method-assign]
        try:
            self._look()
        finally:
            state.__dict__.pop("owned_memberships", None)

    @rule(user=st.sampled_from(USERS), minutes=st.sampled_from([30, 60]))
    def writer_stalls_before_a_state_write(self, user: str, minutes: int) -> None:
        """A look's state write is on its way (no renewal before it: the lease had time left) and stalls past
        the lease; meanwhile the user activates and another look takes the group over. The late write must
        change nothing (the write and the lease check are one transaction)."""
        state = self.world.state
        stalled: list[str] = []
        refusals = state.fenced_refusals

        def stall(write: str) -> None:
            stalled.append(write)
            self.world.clock.current += timedelta(seconds=LEASE_SECONDS + 1)
            self.activate(user, minutes, 1)

        state.in_flight = stall
        try:
            self._look()
        finally:
            state.in_flight = None
        assert not stalled or state.fenced_refusals > refusals, f"the stalled {stalled} was applied"

    @rule(
        user=st.sampled_from(USERS),
        minutes=st.sampled_from([30, 60]),
        seconds=st.integers(0, JIT_CALL_SECONDS),
    )
    def identity_center_slow(self, user: str, minutes: int, seconds: int) -> None:
        """Every Identity Center write of one look takes ``seconds`` (at most the JIT client's bound); the user
        activates during the first, and her notification's look comes while the slow look holds the group."""
        identity = self.world.identity
        calls: list[str] = []

        def slow(name: str) -> Callable[..., object]:
            call = getattr(identity, name)

            def run(*args: object) -> object:
                self.world.clock.current += timedelta(seconds=seconds)
                calls.append(name)
                if len(calls) == 1:
                    target = identity.memberships.get(str(args[0])) if name == "delete_membership" else None
                    self.activate(user, minutes, 1)
                    if target is not None and target[1] == self.world.target_id(user):
                        # her removal was on its way to AWS before she activated again: nothing can call it
                        # back. It ends the membership of the instance before (whose end it was decided on);
                        # the new activation's hint, turned away while this look holds the group, re-adds her
                        self.sent_before[user] = self._stretch(user, self.now)
                return call(*args)

            return run

        names = ("create_user", "create_membership", "delete_membership")
        for name in names:
            setattr(identity, name, slow(name))
        try:
            self._look()
        finally:
            self.sent_before.clear()
            for name in names:
                delattr(identity, name)

    @rule(user=st.sampled_from(USERS), seconds=st.integers(1, 60), minutes=st.sampled_from([30, 60]))
    def listed_before_instance(self, user: str, seconds: int, minutes: int) -> None:
        """Graph lists an activated user (the notification is sent) before her instance is visible."""
        if self._entitled(user, self.now) or user in self.world.graph.listed.get(GROUP, set()):
            return
        self.world.graph.listed.setdefault(GROUP, set()).add(user)
        self.permanent_until[user] = self.now  # listed: the model counts her as entitled from now on
        self._look()
        self.world.clock.current += timedelta(seconds=seconds)
        self.activate(user, minutes, 0)

    @rule()
    def expiries_fire(self) -> None:
        self.world.fire_due()

    @rule(data=st.data())
    def expiry_fires_early(self, data: st.DataObject) -> None:
        if not self.world.scheduler.schedules:
            return
        schedule = data.draw(st.sampled_from(sorted(self.world.scheduler.schedules)))
        self._expire(*self.world.scheduler.fire(schedule))

    @rule(user=st.sampled_from(USERS))
    def expiry_delivered_twice(self, user: str) -> None:
        self._expire(GROUP, user)

    @rule(user=st.sampled_from(USERS), refuse=st.booleans())
    def identity_store_refuses(self, user: str, refuse: bool) -> None:
        name = self.world.user_name(user)
        if refuse:
            self.world.identity.fail_on[name] = "ValidationException: refused"
        else:
            self.world.identity.fail_on.pop(name, None)

    @rule()
    def scheduler_refuses_once(self) -> None:
        self.world.scheduler.fail_next = 1

    @rule()
    def lease_race_lost(self) -> None:
        self.world.state.lose_lease_races = 1
        self._look()

    @rule()
    def poller_runs(self) -> None:
        self._poll()

    @rule()
    def poller_inside_a_look(self) -> None:
        """The poller's schedule fires while a worker's look is reading Graph (the look holds the group)."""
        graph = self.world.graph
        original = graph.members
        fired: list[bool] = []

        def members(group_id: str) -> set[str]:
            if not fired:
                fired.append(True)
                self._poll()
            return original(group_id)

        graph.members = members  # type: ignore[method-assign]
        try:
            self._look()
        finally:
            del graph.members

    @rule()
    def cycle_inside_a_look(self) -> None:
        """A cycle starts while a worker's look is reading Graph (the look holds the group)."""
        graph = self.world.graph
        original = graph.members
        fired: list[bool] = []

        def members(group_id: str) -> set[str]:
            if not fired:
                fired.append(True)
                self._cycle(False)
            return original(group_id)

        graph.members = members  # type: ignore[method-assign]
        try:
            self._look()
        finally:
            del graph.members

    @rule(user=st.sampled_from(USERS), minutes=st.sampled_from([30, 60]))
    def activation_inside_a_cycle(self, user: str, minutes: int) -> None:
        """A cycle reads Entra; then an activation is applied by the worker before the cycle writes."""

        def activation() -> None:
            self.activate(user, minutes, 1)

        self.world.source.after_read = activation
        self._cycle(False)

    @rule(
        seconds=st.one_of(st.integers(1, 90), st.integers(1, 20 * 60)),
        lag=st.one_of(st.just(int(MAX_LAG.total_seconds())), st.integers(0, int(MAX_LAG.total_seconds()))),
    )
    def time_passes(self, seconds: int, lag: int) -> None:
        """The clock moves; on the way, instances end (Graph unlists ``lag`` s later), lagging listings catch
        up, scheduled cycles run and waiting hints come back."""
        target = self.now + timedelta(seconds=seconds)
        while True:
            events = [self.next_cycle, self.next_poll, *self.lag.values()]
            if self.pending_hint is not None:
                events.append(self.pending_hint)
            if self.graph_back is not None:
                events.append(self.graph_back)
            ends = [i.end for i in self.truth.values() if i.end is not None and self.now < i.end <= target]
            events.extend(ends)
            events.extend(self._deadlines())
            moment = min(e for e in events if e is not None)
            if moment > target:
                break
            self.world.clock.current = max(self.now, moment)
            if self.graph_back is not None and self.graph_back <= self.now:
                self.world.graph.down = False
                self.graph_back, self.recovered_at = None, self.now
            for instance in self.truth.values():
                if instance.end == self.now and instance.user not in self.lag:
                    # Graph still shows the instance that ran out: it explains the listing, whatever the lag
                    self._lag(instance.user, self.now + timedelta(seconds=lag))
            for user, until in sorted(self.lag.items()):
                if until <= self.now:
                    del self.lag[user]
                    if not self._entitled(user, self.now) and user not in self.permanent:
                        self.world.graph.unlist(GROUP, user)
            if self.pending_hint is not None and self.pending_hint <= self.now:
                self.pending_hint = None
                self._look()
            if self.next_poll <= self.now:
                self._poll()
                self.next_poll = self.now + POLL
            if self.next_cycle <= self.now:
                self.cycles += 1
                self._cycle(self.cycles % 4 == 0)
                self.next_cycle = self.now + CYCLE
            self._check()
        self.world.clock.current = target

    # ------------------------------------------------------------------ invariants

    @invariant()
    def access_follows_entra(self) -> None:
        PimMachine.steps += 1
        self._check()

    def _check(self) -> None:
        PimMachine.checks += 1
        now = self.now
        unreadable = self.world.graph.down or (self.recovered_at is not None and now - self.recovered_at <= CYCLE)
        for user in USERS:
            member = self.world.is_member(user)
            last = self._last_entitled(user, now)
            if member and not unreadable and (last is None or now - last > CYCLE):
                self._violation(f"(a) {user} is a member at {now}, last entitled {last}")
            stretch = self._stretch(user, now)
            if stretch is None:
                self.applied_in.pop(user, None)
            elif member:
                self.applied_in[user] = stretch
            elif self.applied_in.get(user) == stretch:
                excused = self.sent_before.pop(user, None) == stretch  # decided before the stretch began
                # while Graph is unreachable the cycle fails closed: she is re-added once it answers
                if not self.world.graph.down and not excused:
                    self._violation(f"(b) {user} lost her membership at {now} while an instance is active")
                self.applied_in.pop(user, None)

    def _violation(self, message: str) -> None:
        PimMachine.violations.append(message)
        if self.strict:
            raise AssertionError(message)

    # ------------------------------------------------------------------ the model's truth

    def _look(self) -> None:
        try:
            outcome = self.world.look()
        except (DirectoryError, StateError):  # SQS delivers the hint again after its visibility timeout
            self._hint_at(self.now + RETRY)
        else:
            if outcome.wait_seconds is not None:
                self._hint_at(self.now + timedelta(seconds=outcome.wait_seconds))
        self._check()  # also inside another actor's run: what a look applied counts as applied

    def _poll(self) -> None:
        self.poller.poll()  # a group Graph cannot read is logged and polled again next time
        self._check()

    def _hint_at(self, moment: datetime) -> None:
        self.pending_hint = min(moment, self.pending_hint or moment)

    def _cycle(self, full: bool) -> None:
        with contextlib.suppress(DirectoryError, StateError):  # the next scheduled cycle runs again
            self.world.cycle(full=full)

    def _expire(self, group_id: str, user_id: str) -> None:
        """One expiry invocation; a failed one is retried twice by Lambda."""
        for _ in range(3):
            try:
                self.world.jit.expire(group_id, user_id)
                return
            except (DirectoryError, StateError, SchedulerError):
                continue

    def _deadlines(self) -> list[datetime]:
        """The instants at which a member not entitled any more would break (a): checked on the way."""
        out = []
        for user in USERS:
            last = self._last_entitled(user, self.now)
            if last is not None and last < self.now and self.world.is_member(user):
                deadline = last + CYCLE + timedelta(seconds=1)
                if deadline > self.now:
                    out.append(deadline)
        return out

    def _ended_lag(self, user: str, seconds: int) -> timedelta:
        """How long Graph keeps listing a user after a deactivation. One idsync never saw (no grant recorded
        when it ends, or only the sighting of a listing without an instance, and the instance gone from Graph
        at once) leaves no trace but the listing: the rule then relies on Graph lagging less than ``SETTLE``
        (``SIGHTED_MAX_LAG``); a seen one may lag up to ``MAX_LAG``."""
        lag = timedelta(seconds=seconds)
        record = self.world.state.grant(GROUP, user)
        seen = record is not None and record.phase != GRANT_SIGHTED
        return lag if seen else min(lag, SIGHTED_MAX_LAG)

    def _lag(self, user: str, until: datetime) -> None:
        self.lag[user] = max(until, self.lag.get(user, until))

    def _entitled(self, user: str, now: datetime) -> bool:
        return user in self.permanent or any(i.user == user and i.active_at(now) for i in self.truth.values())

    def _last_entitled(self, user: str, now: datetime) -> datetime | None:
        moments = [min(i.end or now, now) for i in self.truth.values() if i.user == user and i.start <= now]
        if user in self.permanent:
            moments.append(now)
        if user in self.permanent_until:
            moments.append(min(self.permanent_until[user], now))
        return max(moments) if moments else None

    def _stretch(self, user: str, now: datetime) -> datetime | None:
        """The start of the continuous stretch of active member instances covering ``now`` (None: none)."""
        spans = sorted(
            ((i.start, i.end) for i in self.truth.values() if i.user == user and i.start <= now), key=lambda s: s[0]
        )
        start: datetime | None = None
        reach: datetime | None = now  # sentinel: "open" until proven otherwise
        for begin, end in spans:
            if start is None or (reach is not None and begin > reach):
                start, reach = begin, end
            elif reach is not None:
                reach = None if end is None else max(reach, end)
        if start is None or (reach is not None and reach <= now):
            return None
        return start
