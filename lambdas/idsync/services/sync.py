"""Applying a plan: independent writes run concurrently through a small pool, in the order the plan needs.

Speaks to ports only. Each operation declares the resources it touches (``resources``), shared or
exclusive; an operation starts only when every earlier operation (plan order) that conflicts with it
has finished, so the pool keeps every ordering the plan requires and overlaps the rest; the pool runs
one operation at a time on the calling thread until its calls are seen to wait (``PoolSizer``), sending
runs of consecutive ready operations back to back and settling each run after its last call. Ownership
records and log entries are written in batches (``StateStore.write_ownership``, ``append_logs``),
always before ``apply`` returns; a cycle stopped at any point (crash, time budget) is finished by the
next: the next cycle plans again from what is recorded, and a replayed write is harmless (a create that
finds its object already there adopts it, a membership added again answers ConflictException and is
looked up, the delete of an object already gone returns quietly).

Invariants:

* ordering (``resources``): a user (its source id) exclusively for its own create / adopt / update /
  delete, shared for its memberships and for the users whose manager it is; a group likewise; a
  case-folded userName / displayName exclusively for the create that takes it, the rename that frees
  or takes it (temporary ``idsync-renaming-`` names included) and the delete that frees it. So no
  membership is sent before its user and group exist, no group is deleted before its memberships are
  removed, no name is taken while another operation still holds it, and a report is created after its
  manager (a plan never both adds and removes one membership). Concurrency 1 is the one-at-a-time
  applier;
* write-ahead: every create is recorded as intended before it is sent. The intent item names every
  create that may be in flight (``{"intents": [{kind, source_id, name, doc | description}, ...]}``),
  written for a window of upcoming creates in one put before the first of them is dispatched, and an
  entry leaves it only once its ownership record is durable; so a crash or a state error between
  CreateUser/CreateGroup and its (batched) ownership record leaves an intent that the next run resolves
  by looking the object up by name (``resolve_intent``), never an orphan. Each writer has its own
  intent item, written and resolved only under its lease (``INTENT_KEY`` under the sync lease, which
  cycles and on-demand provisioning share; ``jit_intent_key(group)`` under a PIM group's lease), so
  no writer overwrites or deletes another's;
* a managed user or group found deleted by hand is created again and gets every membership the
  desired view gives it, in the same cycle (these rare paths, and the operations waiting on them,
  run one at a time after the pool drains, as do the created-again followups and deferred managers);
* throttling and AWS-side faults (``TargetTransient``, after the client's own retries) are not
  failures: no new operation starts, the ones in flight finish and are recorded, and the next
  invocation carries on; but one operation that stops ``TRANSIENT_STOPS_LIMIT`` runs in a row
  (``TRANSIENT_KEY``) becomes a failure (escrowed) and the run goes on past it, so one object that
  always answers 5xx cannot stall every later write. A failed operation never costs the others.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from idsync.errors import (
    TargetAuthError,
    TargetConflict,
    TargetError,
    TargetNotFound,
    TargetThrottled,
    TargetTransient,
)
from idsync.model import (
    Action,
    AttributeChange,
    CurrentView,
    CycleReport,
    DesiredView,
    Group,
    JsonValue,
    Kind,
    LogEntry,
    Operation,
    OwnedGroup,
    OwnedMembership,
    OwnedUser,
    Ownership,
    Plan,
    PlanPolicy,
    Refusal,
    Status,
    User,
    UserDoc,
    freeze_doc,
)
from idsync.plan import (
    DISPLAY_NAME,
    EXTENSIONS,
    TEMPORARY_NAME_PREFIX,
    USER_NAME,
    desired_doc_for_create,
    resolve_refs,
    with_manager,
)
from idsync.ports import Clock, Forget, IdentityStore, OwnershipWrite, StateStore

try:
    import resource

    _RUSAGE_THREAD: int | None = getattr(resource, "RUSAGE_THREAD", None)
except ImportError:  # no resource module (Windows)
    _RUSAGE_THREAD = None

logger = logging.getLogger(__name__)

LOG_FLUSH_EVERY = 500
RECORD_FLUSH_EVERY = 100  # ownership writes per batch at most: one SQLite transaction, four BatchWriteItem requests
RECORD_FLUSH_SECONDS = 1.0  # and at least this often while applying (at 20 calls a second, this bound comes first)
INTENT_WINDOW = 16  # creates intended ahead in one put of the intent item
INTENT_SCAN = 512  # operations looked through for the next window's creates
INTENT_KEY = "create-intent"  # the sync lease holder's creates in flight: {"intents": [{"kind", "source_id", "name"}]}
PROBE_OPS = 16  # operations measured one at a time before the pool may grow (0: the whole pool at once)
PROBE_EVERY = 512  # operations between two probes while the pool stays at one (measuring costs two syscalls)
# operations (consecutive in plan order, each ready) the applier sends back to back while alone, before it
# settles them (logs, records): the calls run together and so does the bookkeeping, which costs less CPU
# than alternating them one by one
BACK_TO_BACK = 32


def jit_intent_key(group_id: str) -> str:
    """The intent item of the JIT writer holding ``group_id``'s lease."""
    return f"{INTENT_KEY}:jit:{group_id}"


TRANSIENT_KEY = "transient-stops"  # {"key": operation key, "count": runs in a row it stopped}
TRANSIENT_STOPS_LIMIT = 3
Progress = Callable[[int, int], None]
Outcome = tuple[Status, str | None, tuple[AttributeChange, ...], str | None]


def intent_entries(intent: dict[str, object]) -> list[dict[str, object]]:
    """The creates an intent item names: the list shape, or the older single-create shape."""
    entries = intent.get("intents")
    if isinstance(entries, list):
        return [e for e in entries if isinstance(e, dict)]
    return [intent] if "kind" in intent else []


def resolve_intent(
    state: StateStore, target: IdentityStore, owned: Ownership | None = None, key: str = INTENT_KEY
) -> bool:
    """Settle every create a previous run of the writer owning ``key`` sent but may not have recorded; True
    when ownership changed. Call it under that writer's lease, before its first write.

    Each object is looked up by the name it was created with (GetUserId / GetGroupId): found and
    owned by nobody, it is recorded as the intended source object's; the next plan then updates or
    renames it. An entry whose create was never sent finds nothing (or an object of that name made by
    hand, which the plan would have adopted anyway). ``owned`` is loaded only when an intent is found
    and none is given. Raises TargetError / StateError (the intent stays for the next run).
    """
    intent = state.get_item(key)
    if not intent:
        return False
    if owned is None:
        owned = state.load_ownership()
    changed = False
    for entry in intent_entries(intent):
        changed = _resolve_one(state, target, owned, entry) or changed
    state.delete_item(key)
    return changed


def _resolve_one(state: StateStore, target: IdentityStore, owned: Ownership, intent: dict[str, object]) -> bool:
    kind, source_id, name = str(intent["kind"]), str(intent["source_id"]), str(intent["name"])
    if kind == "user":
        found = target.find_user(name)
        mine = owned.users.get(source_id)
        others = {o.target_id for s, o in owned.users.items() if s != source_id}
        if found is not None and found not in others and (mine is None or mine.target_id != found):
            # the create landed: it replaces whatever stale record the source object had
            for group, member in [m for m in owned.memberships if m[1] == source_id]:
                state.forget_membership(group, member)
            doc = intent.get("doc")
            state.record_user(OwnedUser(source_id, found, name, freeze_doc(doc if isinstance(doc, dict) else {})))
            return True
    elif kind == "group":
        found = target.find_group(name)
        held = owned.groups.get(source_id)
        others = {o.target_id for s, o in owned.groups.items() if s != source_id}
        if found is not None and found not in others and (held is None or held.target_id != found):
            for group, member in [m for m in owned.memberships if m[0] == source_id]:
                state.forget_membership(group, member)
            description = intent.get("description")
            state.record_group(
                OwnedGroup(source_id, found, name, description if isinstance(description, str) else None)
            )
            return True
    return False


def resources(op: Operation) -> list[tuple[str, bool]]:
    """What ``op`` touches, as (resource, exclusive): two operations conflict when they share a resource
    and at least one of them holds it exclusively."""
    out: list[tuple[str, bool]] = []
    if op.kind is Kind.MEMBERSHIP:
        # no pair resource: a plan adds or removes a pair, never both (a million-membership plan saves the keys)
        return [(f"g:{op.source_id}", False), (f"u:{op.member_source_id or ''}", False)]
    user = op.kind is Kind.USER
    prefix, names = ("u", "un") if user else ("g", "gn")
    out.append((f"{prefix}:{op.source_id}", True))
    if user and op.user is not None and op.user.manager_source_id and op.user.manager_source_id != op.source_id:
        out.append((f"u:{op.user.manager_source_id}", False))
    renamed = USER_NAME if user else DISPLAY_NAME
    held = {str(v) for c in op.changes if c.attribute == renamed for v in (c.old, c.new) if v is not None}
    if op.action in (Action.CREATE, Action.DELETE, Action.ADOPT):
        held.add(op.name)
    # compared without regard to case: a stricter order than AWS may need, never a looser one
    out.extend((f"{names}:{name.casefold()}", True) for name in sorted(held))
    return out


class _Schedule:
    """Plan-order dependencies between conflicting operations, and the ones ready to start (lowest first)."""

    def __init__(self, ops: Sequence[Operation]) -> None:
        self.waiting = [0] * len(ops)
        self.dependents: dict[int, list[int]] = {}
        self.state = [0] * len(ops)  # 0 waiting, 1 started, 2 finished, 3 deferred to the serial tail
        last: dict[str, int] = {}  # the last exclusive holder of each resource
        readers: dict[str, list[int]] = {}  # shared holders since then
        for index, op in enumerate(ops):
            needs: set[int] = set()
            for resource, exclusive in resources(op):
                before = last.get(resource)
                if before is not None:
                    needs.add(before)
                if exclusive:
                    needs.update(readers.pop(resource, ()))
                    last[resource] = index
                else:
                    readers.setdefault(resource, []).append(index)
            needs.discard(index)
            self.waiting[index] = len(needs)
            for before in needs:
                self.dependents.setdefault(before, []).append(index)
        self.ready = [i for i, n in enumerate(self.waiting) if n == 0]
        heapq.heapify(self.ready)

    def pop(self) -> int:
        index = heapq.heappop(self.ready)
        self.state[index] = 1
        return index

    def finish(self, index: int) -> None:
        self.state[index] = 2
        for after in self.dependents.pop(index, ()):
            self.waiting[after] -= 1
            if self.waiting[after] == 0:
                heapq.heappush(self.ready, after)

    def defer(self, index: int) -> None:
        """Leave ``index`` (and, through its held resources, whatever waits on it) to the serial tail."""
        self.state[index] = 3

    def unfinished(self) -> list[int]:
        return [i for i, s in enumerate(self.state) if s != 2]

    def started(self, index: int) -> bool:
        return self.state[index] != 0


def _blocks() -> int | None:
    """This thread's voluntary context switches so far (it blocked: a socket read, a sleep), None where the
    platform does not count them per thread."""
    if _RUSAGE_THREAD is None:
        return None
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw


class PoolSizer:
    """How many operations the applier keeps in flight: one, run on the dispatching thread, until the calls
    are seen to wait (on the network, on the rate budget) longer than the operations compute; then
    ``limit``.

    Python's threads overlap only waiting: against an Identity Store that answers at once (an emulator in
    the same process), a pool adds its dispatch and its lock hand-offs to every write and overlaps
    nothing. So operations run one at a time are measured (``start`` / ``stop``), a probe of ``probe``
    of them first and another after each ``every`` more (``due``): the thread's CPU time, and the wall time
    beyond it when the thread blocked (a voluntary context switch), so that time the machine gave to other
    processes does not count as waiting. At the end of a probe the pool grows to ``limit`` when most of
    its operations waited longer than they computed (one stall, a disk write, does not make a network),
    and it never shrinks within a run. ``probe`` 0 (or
    ``limit`` 1): ``limit`` from the first operation. Raises ValueError when ``limit`` or ``every`` is
    below 1 or ``probe`` below 0.
    """

    def __init__(self, limit: int, probe: int = PROBE_OPS, every: int = PROBE_EVERY) -> None:
        if limit < 1 or probe < 0 or every < 1:
            raise ValueError(f"pool sizer: limit ({limit}) and every ({every}) must be >= 1, probe ({probe}) >= 0")
        self.limit = limit
        self.probe = probe
        self.every = every
        self.width = limit if probe == 0 else 1
        self._skip = 0  # operations left before the next probe
        self._ops = 0  # operations measured in this probe
        self._waiting = 0  # of which waited longer than they computed

    def due(self) -> bool:
        """Whether the next operation run alone is to be measured (it belongs to a probe)."""
        if self._skip:
            self._skip -= 1
            return False
        return True

    @staticmethod
    def start() -> tuple[float, float, int | None]:
        """A mark taken on the thread about to run one operation."""
        return time.perf_counter(), time.thread_time(), _blocks()

    def stop(self, mark: tuple[float, float, int | None]) -> None:
        """Account the operation run on this thread since ``mark``."""
        wall, cpu, blocks = mark
        cpu = time.thread_time() - cpu
        wall = time.perf_counter() - wall
        after = _blocks()
        blocked = blocks is None or after is None or after > blocks
        self.observe(cpu, max(0.0, wall - cpu) if blocked else 0.0)

    def observe(self, cpu: float, waited: float) -> None:
        """Account one operation run alone: ``cpu`` seconds computing, ``waited`` seconds blocked."""
        if self.width >= self.limit:
            return
        self._ops += 1
        self._waiting += waited > cpu
        if self._ops < self.probe:
            return
        if 2 * self._waiting > self._ops:
            self.width = self.limit
        self._ops, self._waiting, self._skip = 0, 0, self.every


_E = TypeVar("_E", bound=BaseException)


def _detached(error: _E) -> _E:
    """``error`` (and the errors it came from) without tracebacks, unless it ends the cycle (an auth error,
    raised again). The dispatching code keeps the outcomes it settles (a pool's futures hold them too); a
    traceback holds the frames it passed through and, through their callers, the loop holding the error: a
    reference cycle that would keep the applier (views, ownership maps, logs) alive after its cycle until a
    full collection. Only an answer's text is used (logged, reported), and a hand-off to the serial tail is
    read for its type."""
    if isinstance(error, TargetAuthError):
        return error
    seen: BaseException | None = error
    for _ in range(8):  # a chain of causes is short; a loop in it cannot hold this up
        if seen is None:
            break
        seen.__traceback__ = None
        seen = seen.__cause__ or seen.__context__
    return error


class _SerialTail(Exception):
    """A pooled operation reached a path that mutates shared maps (creating again what was deleted by hand)."""


class Applier:
    """Applies operations in plan order (``concurrency`` at a time where they do not conflict), recording
    ownership and a log entry for each.

    ``record_every``: ownership writes buffered per batch (1: each written before the next operation).
    ``concurrency`` is the most in flight; how many are is ``PoolSizer``'s (``self.sizer``, per ``apply``).
    """

    def __init__(
        self,
        target: IdentityStore,
        state: StateStore,
        clock: Clock,
        cycle_id: str,
        owned: Ownership,
        current: CurrentView,
        policy: PlanPolicy,
        desired: DesiredView | None = None,
        concurrency: int = 1,
        record_every: int = 1,
        narrowed: bool = False,
        probe: int = PROBE_OPS,
    ) -> None:
        """``narrowed``: ``owned`` holds some users' records only (a delta cycle's): a create that meets a
        same-named object then asks the state for ownership as a whole (never adopting an object recorded for
        another source object), and a group created again forgets every membership the state records for it.
        ``probe``: operations run one at a time and measured before the pool may grow (``PoolSizer``).
        Raises ValueError when ``concurrency`` or ``record_every`` is below 1, or ``probe`` below 0."""
        if concurrency < 1 or record_every < 1 or probe < 0:
            raise ValueError(
                f"applier: concurrency ({concurrency}) and record_every ({record_every}) must be >= 1, "
                f"probe ({probe}) >= 0"
            )
        self.probe = probe
        self.target = target
        self.desired = desired
        self.state = state
        self.clock = clock
        self.cycle_id = cycle_id
        self.current = current
        self.policy = policy
        self.concurrency = concurrency
        self.record_every = record_every
        self.narrowed = narrowed
        self._claimed_targets: dict[str, set[str]] = {}  # every recorded target id by kind, once a conflict asks
        self.users: dict[str, OwnedUser] = dict(owned.users)
        self.groups: dict[str, OwnedGroup] = dict(owned.groups)
        self.user_targets: dict[str, str] = {sid: o.target_id for sid, o in owned.users.items()}
        self.group_targets: dict[str, str] = {sid: o.target_id for sid, o in owned.groups.items()}
        self.memberships: set[tuple[str, str]] = set(owned.memberships)
        self.pending: list[LogEntry] = []
        self.failures: list[LogEntry] = []
        self.counts: dict[str, dict[str, int]] = {}
        self.writes = 0
        self.attempted = 0  # write operations tried (succeeded or failed; skipped ones excluded)
        self.sequence = 0
        self.deferred_managers: list[User] = []  # created before their manager (a management cycle)
        self.followups: list[Operation] = []  # memberships of objects created again after a hand-made delete
        self.stopped_by: str | None = None  # why the cycle ended early (throttling, AWS faults)
        self.succeeded: set[str] = set()  # keys of the operations that went through this run (SUCCESS only)
        self.unfinished: list[Operation] = []  # writes logged as skipped or failed, follow-ups included
        # the operation that stopped earlier runs with transient errors (counted in TRANSIENT_KEY)
        self.transient_key: str | None = None
        # guards the maps above and the buffers below against the pool's threads
        self._lock = threading.RLock()
        self._pooled = threading.local()
        self._records: dict[tuple[str, ...], OwnershipWrite] = {}  # buffered ownership writes, last per key
        self._flushed_at = time.monotonic()
        self._intended: dict[str, dict[str, JsonValue]] = {}  # intent key -> entry, as last written
        self._intent_written = False
        self._settling: set[str] = set()  # intents whose create finished: dropped once its record is durable
        self._unsettled: set[str] = set()  # intents of creates that ended transient: they may have landed
        self._previous_transient: tuple[str | None, int] = (None, 0)
        self._counted = False
        self.sizer = PoolSizer(concurrency, probe)
        self._handlers: dict[tuple[Kind, Action], Callable[[Applier, Operation], Outcome]] | None = None

    # ------------------------------------------------------------------ loop

    def apply(
        self, operations: Iterable[Operation], should_stop: Callable[[], bool], progress: Progress | None
    ) -> bool:
        """Apply in plan order, up to ``concurrency`` non-conflicting operations at a time; False when stopped
        early (time budget, or AWS throttling past the retries: in-flight operations finish and are recorded
        first). Raises TargetAuthError (after the in-flight operations finish) and whatever a crash raises."""
        ops = list(operations)
        item = self.state.get_item(TRANSIENT_KEY) or {}
        self.transient_key = str(item.get("key") or "") or None
        self._previous_transient = (self.transient_key, int(item.get("count", 0)))
        self._counted = False
        done = [0]

        def advance() -> None:
            done[0] += 1
            if progress is not None:
                progress(done[0], len(ops))

        try:
            rest = ops
            if self.concurrency > 1 and len(ops) > 1:
                schedule = _Schedule(ops)
                if not self._run_pool(ops, schedule, should_stop, advance):
                    self._end()
                    return False
                rest = [ops[i] for i in schedule.unfinished()]
            if not self._run_serial(rest, should_stop, advance):
                self._end()
                return False
            self._resolve_deferred_managers()
            self._end()
            return True
        except BaseException:
            self._salvage()
            raise

    def _salvage(self) -> None:
        """On the way out of a crash: write the records of the writes that went through (what a kill would
        lose, the intents and harmless replays cover); a failure here leaves the first error to surface."""
        try:
            self._flush_records()
        except Exception as error:  # the original error is the one to report
            logger.warning("buffered ownership records were not written", extra={"error": str(error)})

    def _run_pool(
        self, ops: list[Operation], schedule: _Schedule, should_stop: Callable[[], bool], advance: Callable[[], None]
    ) -> bool:
        """Run what the schedule allows, as many at once as ``self.sizer`` says (one: on this thread, measured;
        more: through the pool); False when stopped (the in-flight ones finished). Operations deferred to
        the serial tail, and those waiting on them, stay unfinished."""
        stopping = False
        crash: BaseException | None = None
        flight: dict[Future[tuple[Outcome | BaseException, float, list[str]]], int] = {}
        sizer = self.sizer

        def settle(index: int, outcome: Outcome | BaseException, seconds: float, touched: list[str]) -> None:
            nonlocal stopping, crash
            if isinstance(outcome, _SerialTail):
                schedule.defer(index)
                return
            if isinstance(outcome, BaseException) and not isinstance(outcome, TargetError):
                crash = crash or outcome
                return
            if isinstance(outcome, TargetAuthError):
                crash = crash or outcome
                return
            if not self._complete(ops[index], outcome, seconds, touched):
                stopping = True
            schedule.finish(index)
            advance()
            self._maybe_flush()

        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="idsync-apply") as pool:
            while True:
                while not stopping and crash is None and len(flight) < sizer.width and schedule.ready:
                    if should_stop():
                        stopping = True
                        break
                    index = schedule.pop()
                    self._intend_ahead(ops, index, schedule.started)
                    if sizer.width == 1:
                        # alone: on this thread, as the one-at-a-time applier runs it (nothing else in flight)
                        if sizer.due():
                            mark = sizer.start()
                            outcome, seconds, touched = self._run_one(ops[index])
                            sizer.stop(mark)
                            settle(index, outcome, seconds, touched)
                            continue
                        # the next operations in plan order, while each is ready (ready ones do not conflict):
                        # sent back to back, then settled in order, so the writes go out exactly as one at a
                        # time. An error, a stop, a probe due or records due (``record_every`` of them buffered, or
                        # their second, RECORD_FLUSH_SECONDS, past) ends the run before its next call
                        run = [(index, *self._run_one(ops[index]))]
                        while not isinstance(run[-1][1], BaseException):
                            # a write that went through releases what waits on it at once (its settling below
                            # releases the same: a report created right after its manager stays in the run)
                            schedule.finish(run[-1][0])
                            if not (
                                len(run) < BACK_TO_BACK
                                and schedule.ready
                                and schedule.ready[0] == run[-1][0] + 1
                                and len(self._records) < self.record_every
                                and time.monotonic() - self._flushed_at < RECORD_FLUSH_SECONDS
                                and not should_stop()
                                and not sizer.due()
                            ):
                                break
                            index = schedule.pop()
                            self._intend_ahead(ops, index, schedule.started)
                            run.append((index, *self._run_one(ops[index])))
                        for ran in run:
                            settle(*ran)
                        continue
                    flight[pool.submit(self._pooled_one, ops[index])] = index
                if not flight:
                    break
                finished, _ = wait(flight, return_when=FIRST_COMPLETED)
                for future in sorted(finished, key=flight.__getitem__):
                    index = flight.pop(future)
                    settle(index, *future.result())
        if isinstance(crash, TargetAuthError):
            self._end()
            raise crash
        if crash is not None:
            raise crash  # a crash records nothing more: the write-ahead intents and replays cover it
        return not stopping

    def _pooled_one(self, op: Operation) -> tuple[Outcome | BaseException, float, list[str]]:
        self._pooled.active = True
        return self._run_one(op)

    def _run_one(self, op: Operation) -> tuple[Outcome | BaseException, float, list[str]]:
        """(outcome or the error raised, seconds, the intents of the creates it started)."""
        self._pooled.touched = [self._intent_key(op)]
        started = time.perf_counter()
        try:
            outcome = self._apply_one(op)
        except (TargetError, _SerialTail) as error:  # an answer, or a hand-off: the dispatching code decides
            return _detached(error), time.perf_counter() - started, self._pooled.touched
        except BaseException as error:  # a crash, raised again with its traceback by the dispatching code
            return error, time.perf_counter() - started, self._pooled.touched
        return outcome, time.perf_counter() - started, self._pooled.touched

    def _run_serial(self, ops: list[Operation], should_stop: Callable[[], bool], advance: Callable[[], None]) -> bool:
        """One at a time, then the followups; False when stopped early."""
        index = 0
        while index < len(ops) or self.followups:
            if index >= len(ops):
                ops.extend(op for op in self.followups if self._still_missing(op))
                self.followups = []
                if index >= len(ops):
                    break
            op = ops[index]
            index += 1
            if should_stop():
                return False
            self._intend_ahead(ops, index - 1, index.__gt__)
            outcome, seconds, touched = self._run_one(op)
            if isinstance(outcome, TargetAuthError):
                self._end()
                raise outcome
            if isinstance(outcome, BaseException) and not isinstance(outcome, TargetError):
                raise outcome
            if not self._complete(op, outcome, seconds, touched):
                return False
            advance()
            self._maybe_flush()
        return True

    def _complete(self, op: Operation, outcome: Outcome | TargetError, seconds: float, touched: list[str]) -> bool:
        """Log one finished operation; False when the run must stop (throttled, or an AWS-side fault).
        ``touched``: the intents of the creates it started (its own, and those of objects created again)."""
        note: str | None
        if isinstance(outcome, TargetTransient):
            stops = 0 if isinstance(outcome, TargetThrottled) else self._transient_stop(op)
            if stops < TRANSIENT_STOPS_LIMIT:
                # not a failure of this object: AWS asked to slow down or failed on its side; a create
                # may still have landed, so its intent stays for the next run to resolve
                self.stopped_by = str(outcome)
                self._unsettled.update(touched)
                self._log(op, Status.SKIPPED, op.target_id, (), f"{outcome}; the next run carries on", seconds)
                return False
            status, target_id, changes = Status.FAILURE, op.target_id, op.changes
            note = f"{outcome} (stopped {stops} runs in a row: escrowed so that later operations go on)"
        elif isinstance(outcome, TargetError):
            status, target_id, changes, note = Status.FAILURE, op.target_id, op.changes, str(outcome)
        else:
            status, target_id, changes, note = outcome
        if status is not Status.FAILURE:
            self._transient_cleared(op)
        with self._lock:
            if status is Status.SUCCESS:
                self.succeeded.add(op.key)
            self._settling.update(touched)
        self._log(op, status, target_id, changes, note, seconds)
        return True

    def _transient_stop(self, op: Operation) -> int:
        """Count one more run in a row that ``op`` stopped with a transient error; returns the count (0: not
        counted). One operation is counted a run: the one earlier runs counted when it stops again, else the
        first to stop, so the pool's other in-flight operations cannot reset the count of the one that
        always fails."""
        previous, count = self._previous_transient
        if op.key == previous:
            count += 1
        elif not self._counted:
            count = 1
        else:
            return 0
        self._counted = True
        self.state.put_item(TRANSIENT_KEY, {"key": op.key, "count": count})
        self.transient_key = op.key
        return count

    def _transient_cleared(self, op: Operation) -> None:
        if self.transient_key == op.key:
            self.state.delete_item(TRANSIENT_KEY)
            self.transient_key = None

    def _end(self) -> None:
        """Write every buffered record and log entry, then keep only the intents of creates that may have
        landed unrecorded (the ones that ended with a transient error)."""
        self.flush()
        with self._lock:
            left = {k: v for k, v in self._intended.items() if k in self._unsettled}
            if self._intent_written and left:
                self.state.put_item(INTENT_KEY, {"intents": list(left.values())})
            elif self._intent_written:
                self.state.delete_item(INTENT_KEY)
                self._intent_written = False
            self._intended = left
            self._settling.clear()

    @staticmethod
    def _intent_key(op: Operation) -> str:
        return f"{op.kind.value}:{op.source_id}"

    def _intent_entry(self, op: Operation) -> dict[str, JsonValue] | None:
        """The intent entry of a create (None for anything else)."""
        if op.action is not Action.CREATE:
            return None
        if op.kind is Kind.USER and op.user is not None:
            doc = desired_doc_for_create(op.user, self.user_targets)
            return {"kind": "user", "source_id": op.source_id, "name": op.user.user_name, "doc": doc}
        if op.kind is Kind.GROUP and op.group is not None:
            group = op.group
            return {
                "kind": "group",
                "source_id": op.source_id,
                "name": group.display_name,
                "description": group.description,
            }
        return None

    def _intend_ahead(self, ops: Sequence[Operation], index: int, started: Callable[[int], bool]) -> None:
        """Before ``ops[index]`` is sent: when it is a create not yet intended, intend it and the next creates
        not yet started (a window) in one put, so the pool's next creates find their intent written."""
        if ops[index].action is not Action.CREATE or ops[index].kind is Kind.MEMBERSHIP:
            return  # most operations (memberships): nothing to intend
        entry = self._intent_entry(ops[index])
        known = self._intended.get(self._intent_key(ops[index]))
        if entry is None or (known is not None and known.get("name") == entry["name"]):
            return
        with self._lock:
            self._intended[self._intent_key(ops[index])] = entry
            added = 1
            for later in range(index + 1, min(len(ops), index + INTENT_SCAN)):
                if added >= INTENT_WINDOW:
                    break
                following = self._intent_entry(ops[later]) if not started(later) else None
                key = self._intent_key(ops[later])
                if following is not None and key not in self._intended:
                    self._intended[key] = following
                    added += 1
            self._write_intents()

    def _intend(self, kind: str, source_id: str, name: str, **what: JsonValue) -> None:
        """Make sure the create about to be sent is named by the intent item (written ahead by the loop)."""
        key = f"{kind}:{source_id}"
        touched = getattr(self._pooled, "touched", None)
        if touched is not None and key not in touched:
            touched.append(key)
        with self._lock:
            known = self._intended.get(key)
            if known is not None and known.get("name") == name:
                self._settling.discard(key)
                return
            self._intended[key] = {"kind": kind, "source_id": source_id, "name": name, **what}
            self._settling.discard(key)
            self._write_intents()

    def _write_intents(self) -> None:
        self.state.put_item(INTENT_KEY, {"intents": list(self._intended.values())})
        self._intent_written = True

    def _still_missing(self, op: Operation) -> bool:
        if op.kind is Kind.USER:
            return op.source_id not in self.users
        return (op.source_id, op.member_source_id or "") not in self.memberships

    def _restore_memberships(self, user_sid: str | None = None, group_sid: str | None = None) -> None:
        """Queue every membership the desired view gives a user or group created again."""
        if self.desired is None:
            return
        for group, member in sorted(self.desired.memberships):
            if (user_sid is not None and member != user_sid) or (group_sid is not None and group != group_sid):
                continue
            user = self.desired.users.get(member)
            owner = self.desired.groups.get(group)
            if user is None or owner is None or not user.active:
                continue
            self.followups.append(
                Operation(
                    Kind.MEMBERSHIP,
                    Action.CREATE,
                    group,
                    f"{owner.display_name} <- {user.user_name}",
                    member_source_id=member,
                    reason="created again after a delete made outside idsync",
                )
            )

    def _claimed(self, kind: str, target_id: str) -> bool:
        """Whether a narrowed applier's state records ``target_id`` ("user" or "group") for any source object."""
        if not self.narrowed:
            return False
        if not self._claimed_targets:
            owned = self.state.load_ownership()
            self._claimed_targets["user"] = {o.target_id for o in owned.users.values()}
            self._claimed_targets["group"] = {o.target_id for o in owned.groups.values()}
        return target_id in self._claimed_targets[kind]

    def _forget_memberships(self, user_sid: str | None = None, group_sid: str | None = None) -> None:
        with self._lock:
            if group_sid is not None and self.narrowed:
                # the group's members this applier was not given are recorded too
                self.memberships |= set(self.state.load_ownership_of((), (group_sid,)).memberships)
            for pair in [m for m in self.memberships if m[1] == user_sid or m[0] == group_sid]:
                self._record(Forget("membership", pair))
                self.memberships.discard(pair)

    # ------------------------------------------------------------------ batched ownership records

    def _record(self, write: OwnershipWrite) -> None:
        """Buffer one ownership write (the last one per key wins); the loop flushes the buffer."""
        if isinstance(write, OwnedUser):
            key: tuple[str, ...] = ("user", write.source_id)
        elif isinstance(write, OwnedGroup):
            key = ("group", write.source_id)
        elif isinstance(write, OwnedMembership):
            key = ("membership", write.group_source_id, write.user_source_id)
        else:
            key = (write.kind, *write.key)
        with self._lock:
            self._records.pop(key, None)
            self._records[key] = write

    def _wrote(self) -> None:
        with self._lock:
            self.writes += 1

    def _maybe_flush(self) -> None:
        if len(self._records) >= self.record_every or time.monotonic() - self._flushed_at >= RECORD_FLUSH_SECONDS:
            self._flush_records()
        if len(self.pending) >= LOG_FLUSH_EVERY:
            self.flush()

    def _flush_records(self) -> None:
        """Write the buffered ownership records in one batch; then the finished creates' intents may go."""
        with self._lock:
            writes, self._records = list(self._records.values()), {}
            settled, self._settling = self._settling, set()
        if writes:
            self.state.write_ownership(writes)
        with self._lock:
            for key in settled - self._unsettled:
                self._intended.pop(key, None)
        self._flushed_at = time.monotonic()

    def _in_pool(self) -> None:
        """Raise _SerialTail on a pool thread: the caller's path mutates maps other operations read."""
        if getattr(self._pooled, "active", False):
            raise _SerialTail()

    def _resolve_deferred_managers(self) -> None:
        for user in self.deferred_managers:
            owned = self.users.get(user.source_id)
            manager = self.user_targets.get(user.manager_source_id or "")
            if owned is None or manager is None:
                continue
            doc = with_manager(owned.doc, manager)
            change = AttributeChange(EXTENSIONS, owned.doc.get(EXTENSIONS), doc.get(EXTENSIONS))
            op = Operation(Kind.USER, Action.UPDATE, user.source_id, user.user_name, owned.target_id, (change,), user)
            started = time.perf_counter()
            try:
                status, target_id, changes, note = self._update_user(op)
            except TargetTransient as error:
                # not this user's failure: the manager reference waits for the next run
                status, target_id, changes = Status.SKIPPED, owned.target_id, (change,)
                note = f"{error}; the next run carries on"
            except TargetError as error:
                status, target_id, changes, note = Status.FAILURE, owned.target_id, (change,), str(error)
            self._log(op, status, target_id, changes, note, time.perf_counter() - started)

    def _apply_one(self, op: Operation) -> Outcome:
        if self._handlers is None:  # built once per applier, not once per operation; plain functions (of the
            # applier's own class), called with self: bound methods held by the applier would keep it alive after
            # the cycle (a reference cycle, freed only by a full collection)
            cls = type(self)
            self._handlers = {
                (Kind.USER, Action.CREATE): cls._create_user,
                (Kind.USER, Action.ADOPT): cls._adopt_user,
                (Kind.USER, Action.UPDATE): cls._update_user,
                (Kind.USER, Action.DELETE): cls._delete_user,
                (Kind.GROUP, Action.CREATE): cls._create_group,
                (Kind.GROUP, Action.ADOPT): cls._adopt_group,
                (Kind.GROUP, Action.UPDATE): cls._update_group,
                (Kind.GROUP, Action.DELETE): cls._delete_group,
                (Kind.MEMBERSHIP, Action.CREATE): cls._add_member,
                (Kind.MEMBERSHIP, Action.ADOPT): cls._adopt_member,
                (Kind.MEMBERSHIP, Action.DELETE): cls._remove_member,
            }
        return self._handlers[(op.kind, op.action)](self, op)

    # ------------------------------------------------------------------ users

    def _record_user(self, user: User, target_id: str, doc: UserDoc) -> None:
        owned = OwnedUser(
            source_id=user.source_id,
            target_id=target_id,
            user_name=user.user_name,
            doc=freeze_doc(doc),
            manager_source_id=user.manager_source_id,
            fingerprint=user.fingerprint(),
        )
        with self._lock:
            self._record(owned)
            self.users[user.source_id] = owned
            self.user_targets[user.source_id] = target_id

    def _create_user(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.user is not None
        user = op.user
        doc = desired_doc_for_create(user, self.user_targets)
        if user.manager_source_id and user.manager_source_id not in self.user_targets:
            with self._lock:
                self.deferred_managers.append(user)
        changes = tuple(AttributeChange(k, None, v) for k, v in sorted(doc.items()))
        if user.source_id in self.users:
            # created again (gone from AWS): the memberships recorded for the old object went with it
            self._forget_memberships(user_sid=user.source_id)
        self._intend("user", user.source_id, user.user_name, doc=doc)
        try:
            target_id = self.target.create_user(user.user_name, doc)
            self._wrote()
        except TargetConflict:
            # a previous run created it but stopped before recording it, or it was created by hand
            existing = self.target.find_user(user.user_name)
            with self._lock:
                known = {o.target_id for o in self.users.values()}
                mine = existing is not None and (existing in known or self._claimed("user", existing))
            if existing is None or mine:
                raise
            self.target.update_user(existing, [AttributeChange(k, None, v) for k, v in sorted(doc.items())])
            self._wrote()
            target_id = existing
        self._record_user(user, target_id, doc)
        return Status.SUCCESS, target_id, changes, None

    def _adopt_user(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.user is not None
        assert op.target_id is not None
        current = self.current.users.get(op.target_id)
        doc = with_manager(current.doc, current.manager_target_id) if current else {}
        self._record_user(op.user, op.target_id, doc)
        return Status.SUCCESS, op.target_id, (), op.reason

    def _update_user(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.user is not None
        assert op.target_id is not None
        changes = tuple(AttributeChange(c.attribute, c.old, resolve_refs(c.new, self.user_targets)) for c in op.changes)
        try:
            self.target.update_user(op.target_id, changes)
        except TargetNotFound:
            # deleted outside idsync since it was read: provision it again, with its memberships
            return self._recreate_user(op.user.source_id, op)
        self._wrote()
        previous = self.users.get(op.user.source_id)
        doc: dict[str, JsonValue] = dict(previous.doc) if previous else {}
        for change in changes:
            if change.attribute == "UserName":
                continue
            if change.new is None:
                doc.pop(change.attribute, None)
            else:
                doc[change.attribute] = change.new
        self._record_user(op.user, op.target_id, doc)
        return Status.SUCCESS, op.target_id, changes, None

    def _recreate_user(
        self, source_id: str, op: Operation | None = None
    ) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        """Create a managed user again (deleted by hand in AWS) and queue its memberships."""
        user = self.desired.users.get(source_id) if self.desired is not None else None
        if user is None and op is not None and op.user is not None:
            user = op.user
        if user is None or user.user_name.startswith(TEMPORARY_NAME_PREFIX):
            raise TargetNotFound(f"user {source_id} was deleted outside idsync; the next cycle provisions it again")
        self._in_pool()
        self._record(Forget("user", (source_id,)))
        self.users.pop(source_id, None)
        self.user_targets.pop(source_id, None)
        self._forget_memberships(user_sid=source_id)
        create = Operation(Kind.USER, Action.CREATE, source_id, user.user_name, user=user, reason="deleted by hand")
        try:
            result = self._create_user(create)
        except TargetConflict:
            # its name is still held by a managed user this cycle renames later: create it after the renames
            self.followups.append(create)
            self._restore_memberships(user_sid=source_id)
            return Status.SKIPPED, None, (), "deleted outside idsync; created again at the end of this cycle"
        self._restore_memberships(user_sid=source_id)
        return result

    def _recreate_group(self, source_id: str) -> str:
        """Create a managed group again (deleted by hand in AWS) and queue its members; its new id."""
        group = self.desired.groups.get(source_id) if self.desired is not None else None
        if group is None:
            raise TargetNotFound(f"group {source_id} was deleted outside idsync and is no longer in scope")
        self._in_pool()
        self._record(Forget("group", (source_id,)))
        self.groups.pop(source_id, None)
        self.group_targets.pop(source_id, None)
        self._forget_memberships(group_sid=source_id)
        _, target_id, _, _ = self._create_group(
            Operation(Kind.GROUP, Action.CREATE, source_id, group.display_name, group=group)
        )
        self._restore_memberships(group_sid=source_id)
        assert target_id is not None
        return target_id

    def _delete_user(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.target_id is not None
        self.target.delete_user(op.target_id)
        self._wrote()
        with self._lock:
            self._forget_memberships(user_sid=op.source_id)
            self._record(Forget("user", (op.source_id,)))
            self.users.pop(op.source_id, None)
            self.user_targets.pop(op.source_id, None)
        return Status.SUCCESS, op.target_id, (), op.reason

    # ------------------------------------------------------------------ groups

    def _record_group(self, group: Group, target_id: str) -> None:
        owned = OwnedGroup(group.source_id, target_id, group.display_name, group.description, group.fingerprint())
        with self._lock:
            self._record(owned)
            self.groups[group.source_id] = owned
            self.group_targets[group.source_id] = target_id

    def _create_group(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.group is not None
        group = op.group
        changes: tuple[AttributeChange, ...] = (AttributeChange("DisplayName", None, group.display_name),)
        if group.description:
            changes += (AttributeChange("Description", None, group.description),)
        if group.source_id in self.groups:
            self._forget_memberships(group_sid=group.source_id)
        self._intend("group", group.source_id, group.display_name, description=group.description)
        try:
            target_id = self.target.create_group(group.display_name, group.description)
            self._wrote()
        except TargetConflict:
            existing = self.target.find_group(group.display_name)
            with self._lock:
                known = {o.target_id for o in self.groups.values()}
                mine = existing is not None and (existing in known or self._claimed("group", existing))
            if existing is None or mine:
                raise
            target_id = existing
        self._record_group(group, target_id)
        return Status.SUCCESS, target_id, changes, None

    def _adopt_group(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.group is not None
        assert op.target_id is not None
        current = self.current.groups.get(op.target_id)
        adopted = Group(op.group.source_id, current.display_name, current.description) if current else op.group
        self._record_group(adopted, op.target_id)
        return Status.SUCCESS, op.target_id, (), op.reason

    def _update_group(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.group is not None
        assert op.target_id is not None
        try:
            self.target.update_group(op.target_id, op.changes)
        except TargetNotFound:
            # deleted outside idsync since it was read: provision it again, with its members
            target_id = self._recreate_group(op.source_id)
            return Status.SUCCESS, target_id, op.changes, "created again: it was deleted outside idsync"
        self._wrote()
        self._record_group(op.group, op.target_id)
        return Status.SUCCESS, op.target_id, op.changes, None

    def _delete_group(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.target_id is not None
        self.target.delete_group(op.target_id)
        self._wrote()
        with self._lock:
            self._forget_memberships(group_sid=op.source_id)
            self._record(Forget("group", (op.source_id,)))
            self.groups.pop(op.source_id, None)
            self.group_targets.pop(op.source_id, None)
        return Status.SUCCESS, op.target_id, (), op.reason

    # ------------------------------------------------------------------ memberships

    def _member_targets(self, op: Operation) -> tuple[str, str] | str:
        assert op.member_source_id is not None
        group_target = self.group_targets.get(op.source_id)
        user_target = self.user_targets.get(op.member_source_id)
        if group_target is None:
            return f"group {op.source_id} is not provisioned (see its own log entry)"
        if user_target is None:
            return f"user {op.member_source_id} is not provisioned (see its own log entry)"
        return group_target, user_target

    def _add_member(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.member_source_id is not None
        targets = self._member_targets(op)
        if isinstance(targets, str):
            return Status.SKIPPED, None, (), targets
        group_target, user_target = targets
        try:
            try:
                membership_id = self.target.create_membership(group_target, user_target)
            except TargetNotFound:
                # the group or the user was deleted outside idsync: create it again, then add
                targets_again = self._recreate_missing(op, group_target, user_target)
                if targets_again is None:
                    return Status.SKIPPED, None, (), "the user is created again at the end of this cycle"
                group_target, user_target = targets_again
                membership_id = self.target.create_membership(group_target, user_target)
            self._wrote()
        except TargetConflict:
            found = self.target.find_membership(group_target, user_target)
            if found is None:
                raise
            membership_id = found
        self._record_member(op, membership_id)
        return Status.SUCCESS, membership_id, (AttributeChange("members", None, user_target),), None

    def _recreate_missing(self, op: Operation, group_target: str, user_target: str) -> tuple[str, str] | None:
        """(group, user) target ids once the missing one is created again; None when the user waits."""
        assert op.member_source_id is not None
        self._in_pool()
        owned_group = self.groups.get(op.source_id)
        if owned_group is None or self.target.find_group(owned_group.display_name) != group_target:
            group_target = self._recreate_group(op.source_id)
        owned_user = self.users.get(op.member_source_id)
        if owned_user is None or self.target.find_user(owned_user.user_name) != user_target:
            self._recreate_user(op.member_source_id)
            if op.member_source_id not in self.user_targets:
                return None
            user_target = self.user_targets[op.member_source_id]
        return group_target, user_target

    def _adopt_member(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.membership_id is not None
        self._record_member(op, op.membership_id)
        return Status.SUCCESS, op.membership_id, (), op.reason

    def _record_member(self, op: Operation, membership_id: str) -> None:
        assert op.member_source_id is not None
        with self._lock:
            self._record(OwnedMembership(op.source_id, op.member_source_id, membership_id))
            self.memberships.add((op.source_id, op.member_source_id))

    def _remove_member(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.member_source_id is not None
        assert op.membership_id is not None
        self.target.delete_membership(op.membership_id)
        self._wrote()
        with self._lock:
            self._record(Forget("membership", (op.source_id, op.member_source_id)))
            self.memberships.discard((op.source_id, op.member_source_id))
        return Status.SUCCESS, op.membership_id, (), op.reason

    # ------------------------------------------------------------------ logs and report

    def _entry(
        self,
        kind: str,
        action: str,
        status: Status,
        source_id: str,
        name: str,
        target_id: str | None = None,
        changes: tuple[AttributeChange, ...] = (),
        error: str | None = None,
        seconds: float = 0.0,
    ) -> LogEntry:
        self.sequence += 1
        return LogEntry(
            cycle_id=self.cycle_id,
            change_id=f"{self.cycle_id}-{self.sequence:06d}",
            time=self.clock.now().isoformat(),
            kind=kind,
            action=action,
            status=status,
            source_id=source_id,
            name=name,
            target_id=target_id,
            modified=changes,
            error=error,
            duration_ms=seconds * 1000.0,
        )

    def _log(
        self,
        op: Operation,
        status: Status,
        target_id: str | None,
        changes: tuple[AttributeChange, ...],
        note: str | None,
        seconds: float,
    ) -> None:
        source = op.key.split(":", 1)[1] if op.kind is Kind.MEMBERSHIP else op.source_id
        error = note if status is not Status.SUCCESS else None
        entry = self._entry(op.kind.value, op.action.value, status, source, op.name, target_id, changes, error, seconds)
        self.pending.append(entry)
        if op.is_write and status is not Status.SKIPPED:
            self.attempted += 1
        if op.is_write and status is not Status.SUCCESS:
            self.unfinished.append(op)
        if status is Status.FAILURE:
            self.failures.append(entry)
        if status is Status.SUCCESS:
            bucket = self.counts.setdefault(op.kind.value, {})
            bucket[op.action.value] = bucket.get(op.action.value, 0) + 1

    def log_refusals(self, refusals: Iterable[Refusal]) -> None:
        for refusal in refusals:
            self.pending.append(
                self._entry(
                    refusal.kind,
                    "skip",
                    Status.SKIPPED,
                    refusal.source_id,
                    refusal.name,
                    error=refusal.message,
                )
            )

    def log_held_back(self, operations: Iterable[Operation]) -> None:
        for op in operations:
            self.pending.append(
                self._entry(
                    op.kind.value,
                    op.action.value,
                    Status.SKIPPED,
                    op.source_id,
                    op.name,
                    op.target_id,
                    error="held back by the deletion guard",
                )
            )

    def _in_plan_order(self, plan: Plan) -> dict[str, dict[str, int]]:
        """The counts ordered as the plan orders kinds and actions, whatever order the pool finished in."""
        rank: dict[tuple[str, str], int] = {}
        for op in plan.operations:
            rank.setdefault((op.kind.value, op.action.value), len(rank))

        def first(kind: str) -> int:
            return min(rank.get((kind, action), len(rank)) for action in self.counts[kind])

        return {
            kind: dict(sorted(self.counts[kind].items(), key=lambda item: rank.get((kind, item[0]), len(rank))))
            for kind in sorted(self.counts, key=first)
        }

    def flush(self) -> None:
        """Write the buffered ownership records, then the pending log entries."""
        self._flush_records()
        if self.pending:
            self.state.append_logs(self.pending)
            self.pending = []

    def report(self, plan: Plan, started: str, dry_run: bool, complete: bool) -> CycleReport:
        counts = plan.summary() if dry_run else self._in_plan_order(plan)
        return CycleReport(
            cycle_id=self.cycle_id,
            started=started,
            finished=self.clock.now().isoformat(),
            dry_run=dry_run,
            counts=counts,
            failures=tuple(self.failures),
            refusals=plan.refusals,
            guard=plan.guard,
            writes=plan.writes if dry_run else self.writes,
            complete=complete,
        )
