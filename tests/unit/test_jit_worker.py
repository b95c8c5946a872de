"""The JIT worker's queue handling on a fake clock: requeue exactly when the next token is due, one look per
group per batch, poison messages, and a burst of 20 activations driven through the worker loop."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest

from idsync.ports import Hint
from idsync.services.jit import RESEND_AFTER_RECEIVES, JitWorker, MessageFate
from idsync.services.token_bucket import BucketPolicy
from tests.fakes import FakeClock
from tests.unit.test_jit_service import GROUP, T0, World, make_world

QUEUE_VISIBILITY = timedelta(seconds=360)  # the stack's: six times the worker's timeout


@dataclass
class Message:
    id: str
    body: str
    visible_at: datetime
    receipt: str = ""
    receives: int = 0


@dataclass
class FakeQueue:
    """SQS on the fake clock: a received message is hidden for the visibility timeout unless changed."""

    clock: FakeClock
    messages: dict[str, Message] = field(default_factory=dict)
    delays: list[int] = field(default_factory=list)
    resent: list[int] = field(default_factory=list)
    ids: itertools.count[int] = field(default_factory=itertools.count)

    def send(self, hint: Hint, seconds: int = 0) -> None:
        number = next(self.ids)
        self.messages[f"m{number}"] = Message(
            f"m{number}", hint.to_json(), self.clock.now() + timedelta(seconds=seconds)
        )

    def receive(self, limit: int = 10) -> list[Message]:
        now = self.clock.now()
        batch = sorted((m for m in self.messages.values() if m.visible_at <= now), key=lambda m: m.visible_at)[:limit]
        for message in batch:
            message.receives += 1
            message.receipt = f"{message.id}/{message.receives}"
            message.visible_at = now + QUEUE_VISIBILITY
        return batch

    def next_visible(self) -> datetime | None:
        return min((m.visible_at for m in self.messages.values()), default=None)

    # ports.HintRetry
    def delay(self, receipt_handle: str, seconds: int) -> None:
        message = self.messages[receipt_handle.split("/", maxsplit=1)[0]]
        message.visible_at = self.clock.now() + timedelta(seconds=seconds)
        self.delays.append(seconds)

    def resend(self, hint: Hint, seconds: int) -> None:
        self.resent.append(seconds)
        self.send(hint, seconds)


def hint(group: str = GROUP) -> Hint:
    return Hint(group, "notification", T0.isoformat())


@pytest.fixture
def world() -> World:
    return make_world()


@pytest.fixture
def queue(world: World) -> FakeQueue:
    return FakeQueue(world.clock)


def test_with_no_token_the_message_is_hidden_until_the_next_token_and_kept(world: World, queue: FakeQueue) -> None:
    world.drain_bucket()
    world.clock.advance(0.3)
    world.graph.grant("i1", "6d1e3f5a-7b9c-4d2e-8f0a-3c5e7a9b1d2f", T0, 30)
    queue.send(hint())
    [message] = queue.receive()

    result = JitWorker(world.service, queue).batch().handle(message.body, message.receipt, message.receives)

    # Then the next token is 1.7 s away: hidden 2 s (rounded up), reported failed so SQS keeps it
    assert result.fate is MessageFate.REQUEUED
    assert result.failed
    assert result.requeue_seconds == 2
    assert queue.delays == [2]
    assert message.visible_at == world.clock.now() + timedelta(seconds=2)


def test_a_message_received_many_times_is_sent_afresh_instead(world: World, queue: FakeQueue) -> None:
    world.drain_bucket()
    world.graph.grant("i1", "6d1e3f5a-7b9c-4d2e-8f0a-3c5e7a9b1d2f", T0, 30)

    result = JitWorker(world.service, queue).batch().handle(hint().to_json(), "r", RESEND_AFTER_RECEIVES)

    # Then a new message carries the hint (its receive count starts again) and this one may be deleted
    assert result.fate is MessageFate.RESENT
    assert not result.failed
    assert queue.resent == [2]
    assert [json.loads(m.body)["group_id"] for m in queue.messages.values()] == [GROUP]


def test_one_look_per_group_per_batch(world: World, queue: FakeQueue) -> None:
    world.graph.grant("i1", "6d1e3f5a-7b9c-4d2e-8f0a-3c5e7a9b1d2f", T0, 30)
    batch = JitWorker(world.service, queue).batch()

    first = batch.handle(hint().to_json(), "a", 1)
    reads = world.graph.reads
    second = batch.handle(hint(GROUP.upper()).to_json(), "b", 1)

    assert first.fate is MessageFate.DONE
    assert first.outcome is not None
    assert len(first.outcome.activations) == 1
    assert second.fate is MessageFate.DUPLICATE
    assert not second.failed
    assert world.graph.reads == reads


@pytest.mark.parametrize("body", ["not json", "[]", '{"group_id": ""}', '{"group_id": "g", "reason": "r"}'])
def test_a_message_that_is_not_a_hint_is_poison(world: World, queue: FakeQueue, body: str) -> None:
    result = JitWorker(world.service, queue).batch().handle(body, "r", 1)

    assert result.fate is MessageFate.POISON
    assert result.failed
    assert result.error
    assert world.graph.reads == 0


def test_a_burst_of_20_activations_in_one_second_is_applied_at_the_bucket_s_pace() -> None:
    # Given 20 users who each activate within one second, each activation notified as a hint
    world = make_world()
    users = [f"00000000-0000-4000-8000-{n:012d}" for n in range(20)]
    for n, user_id in enumerate(users):
        world.graph.add_user(user_id, f"User{n} Burst")
    activations = [(T0 + timedelta(seconds=n * 0.05), user_id) for n, user_id in enumerate(users)]
    queue = FakeQueue(world.clock)
    worker = JitWorker(world.service, queue)
    applied: list[float] = []
    receives: list[int] = []

    # When the worker loop runs (Lambda's event source mapping: batches of up to 10 visible messages)
    while activations or queue.messages:
        upcoming = [t for t in (activations[0][0] if activations else None, queue.next_visible()) if t is not None]
        world.clock.current = max(world.clock.current, min(upcoming))
        while activations and activations[0][0] <= world.clock.now():
            at, user_id = activations.pop(0)
            world.graph.grant(f"i-{user_id}", user_id, at, 60)
            queue.send(hint())
        batch = worker.batch()
        for message in queue.receive():
            receives.append(message.receives)
            result = batch.handle(message.body, message.receipt, message.receives)
            assert result.outcome is None or not result.outcome.refused
            if result.outcome is not None:
                applied += [(world.clock.now() - T0).total_seconds()] * len(result.outcome.activations)
            if not result.failed:
                del queue.messages[message.id]

    # Then every activation is applied, the last one when the bucket first allows it ((20 - 5) / 0.5 = 30 s)
    assert len(applied) == 20
    assert world.members_in_identity_center() == {f"user{n}@contoso.example" for n in range(20)}
    assert max(applied) <= 30.0 + 1.0  # waits are rounded up to whole seconds
    # and no window ever holds more than the bucket allows: capacity + refill * width / period
    policy = BucketPolicy()
    times = sorted(applied)
    for i, j in itertools.combinations(range(len(times)), 2):
        width = times[j] - times[i]
        assert j - i + 1 <= policy.capacity + policy.refill * width / policy.period_seconds + 1e-9, (i, j, width)
    # and each requeue came back exactly when its token was due, never later than one period
    assert queue.delays
    assert all(1 <= seconds <= 2 for seconds in queue.delays)
    # and no message came near the dead-letter queue (maxReceiveCount 50)
    assert max(receives) < RESEND_AFTER_RECEIVES
