"""The PIM for Groups flow on this machine, with the real Lambda handlers:

    Graph emulator (activation -> change notification)
      -> webhook handler, served over HTTP on 127.0.0.1 as API Gateway REST proxy events
      -> SQS (moto) -> a worker loop handing SQS batches to the jit_worker handler -> Identity Store (moto)
      -> EventBridge Scheduler (moto) -> a scheduler loop firing due expiries into the jit_expiry handler
    and, with ``poll_seconds``, a loop invoking the pim_poller handler that often (its EventBridge schedule);
    with ``webhook_down``, no Graph subscription is made, so no notification ever arrives

AWS is whatever boto3 reaches with its defaults: moto in-process (``mock_aws``) or a moto server
(``AWS_ENDPOINT_URL``). The PIM groups must already be provisioned (one sync cycle)::

    with LocalJit(emulator, settings, clock=clock) as jit:
        jit.activate(group_id, user_id, minutes=60)
        applied = jit.wait_applied(group_id, user_id)   # applied.latency: notification -> membership present
        clock.advance(61 * 60)                           # a fake clock: the grant has ended
        jit.wait_removed(group_id, user_id)              # the expiry schedule fired (jit.fired)

The clock (``clock=``, the wall clock by default) is shared by the emulator's PIM, the JIT service (its
token bucket included) and the scheduler loop, so moving a fake clock ends grants; SQS keeps real time.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import boto3
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from idsync.adapters.clock import SystemClock
from idsync.adapters.scheduler import parse_at
from idsync.config import SETTINGS_ENV, Settings
from idsync.handlers import jit_expiry, jit_worker, pim_poller, webhook
from idsync.ports import BucketState, Clock, GrantStore, StateStore
from idsync.services.jit import JitService
from idsync.wiring import build_jit_service, build_jit_worker, build_pim_poller, build_subscriptions_service
from sandbox.graph_emulator import GraphEmulator

ACCOUNT = "123456789012"
QUEUE_VISIBILITY_SECONDS = 30  # how soon a failed (not requeued) message comes back
POLL_SECONDS = 0.01
SCHEDULER_POLL_SECONDS = 0.05


class MemoryBucketStore:
    """``ports.BucketStore`` in memory, shared by the threads of this process (local runs only)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, BucketState] = {}

    def load(self, name: str) -> BucketState | None:
        with self._lock:
            return self._buckets.get(name)

    def replace(self, name: str, expected: BucketState | None, new: BucketState) -> bool:
        with self._lock:
            if self._buckets.get(name) != expected:
                return False
            self._buckets[name] = new
            return True


@dataclass
class LambdaContext:
    """What the Powertools decorators read from Lambda's context object."""

    function_name: str
    memory_limit_in_mb: int = 512
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{_region()}:{ACCOUNT}:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def _region() -> str:
    return boto3.session.Session().region_name or "us-east-1"


def invoke(module: Any, event: Any, function_name: str, quiet: bool) -> Any:
    """Call a handler module's ``lambda_handler`` as Lambda would."""
    try:
        return module.lambda_handler(event, LambdaContext(function_name))
    finally:
        if quiet:
            # disabled metrics are never flushed, and so never cleared: drop them
            module.metrics.clear_metrics()


# --------------------------------------------------------------------------- the webhook over HTTP


def api_gateway_event(request: Request) -> dict[str, Any]:
    """The API Gateway REST API proxy-integration event for an HTTP request (query parameters URL-decoded)."""
    raw = request.get_data()
    try:
        body, encoded = raw.decode("utf-8"), False
    except UnicodeDecodeError:
        body, encoded = base64.b64encode(raw).decode(), True
    headers = dict(request.headers.items())
    query = dict(request.args.items()) or None
    return {
        "resource": request.path,
        "path": request.path,
        "httpMethod": request.method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: request.args.getlist(k) for k in request.args} or None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": request.path,
            "httpMethod": request.method,
            "path": f"/local{request.path}",
            "stage": "local",
            "requestId": str(uuid.uuid4()),
            "accountId": ACCOUNT,
            "identity": {"sourceIp": request.remote_addr or "127.0.0.1"},
            "requestTimeEpoch": int(time.time() * 1000),
        },
        "body": body,
        "isBase64Encoded": encoded,
    }


class _QuietHandler(WSGIRequestHandler):
    disable_nagle_algorithm = True

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Requests are answered, not printed."""


class WebhookServer:
    """The webhook Lambda handler behind a local HTTP server, as API Gateway would invoke it."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.requests = 0

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_port}"

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        self.requests += 1
        answer = invoke(webhook, api_gateway_event(request), "idsync-webhook", self.quiet)
        headers = {k: v[-1] for k, v in (answer.get("multiValueHeaders") or {}).items()}
        headers.update(answer.get("headers") or {})
        body = answer.get("body") or ""
        data = base64.b64decode(body) if answer.get("isBase64Encoded") else body.encode("utf-8")
        response = Response(data, status=answer["statusCode"], headers=headers)
        return response(environ, start_response)

    def start(self) -> WebhookServer:
        self._server = make_server("127.0.0.1", 0, self, threaded=True, request_handler=_QuietHandler)
        server = self._server
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.05), name="local-webhook", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> WebhookServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- the flow


@dataclass(frozen=True)
class Applied:
    """An activation seen through: when Graph notified the webhook and when the membership was present."""

    notified_at: float  # time.time()
    present_at: float

    @property
    def latency(self) -> float:
        return self.present_at - self.notified_at


@dataclass(frozen=True)
class Fired:
    """One expiry schedule fired by the local scheduler loop."""

    name: str
    at: datetime
    event: dict[str, Any]
    fired_at: float  # time.time()
    seconds: float  # how long the expiry function took (the removal included)
    result: dict[str, Any] | None
    error: str | None = None


class LocalJit:
    """Webhook, queue, worker, scheduler and expiry running here against the emulator and AWS as boto3 sees it."""

    def __init__(
        self,
        emulator: GraphEmulator,
        settings: Settings,
        *,
        clock: Clock | None = None,
        state: StateStore | None = None,
        quiet: bool = True,
        poll_seconds: float | None = None,
        webhook_down: bool = False,
    ) -> None:
        """``clock``: the time of the emulator's PIM, the JIT service (its token bucket included) and the
        scheduler loop; ``state``: the state store the sync engine uses (default: the settings' one);
        ``quiet``: no metrics printed and only warnings logged while it runs; ``poll_seconds``: run the PIM
        poller this often (None: never); ``webhook_down``: make no Graph subscription (no notification)."""
        self.emulator = emulator
        self.base_settings = settings
        self.clock = clock or SystemClock()
        self.state = state
        self.quiet = quiet
        self.poll_seconds = poll_seconds
        self.webhook_down = webhook_down
        self.polls = 0
        self.webhook = WebhookServer(quiet)
        self.fired: list[Fired] = []
        self.batches = 0
        self.errors: list[str] = []
        self.settings: Settings = settings
        self.service: JitService | None = None
        self.queue_url = ""
        self.schedule_group = ""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._restore: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ start and stop

    def __enter__(self) -> LocalJit:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        suffix = uuid.uuid4().hex[:8]
        sqs = boto3.client("sqs")
        self.queue_url = sqs.create_queue(
            QueueName=f"idsync-jit-{suffix}", Attributes={"VisibilityTimeout": str(QUEUE_VISIBILITY_SECONDS)}
        )["QueueUrl"]
        self.schedule_group = f"idsync-expiry-{suffix}"
        boto3.client("scheduler").create_schedule_group(Name=self.schedule_group)
        self.webhook.start()
        self._restore.append(self.webhook.stop)
        pim = self.base_settings.pim
        self.settings = self.base_settings.model_copy(
            update={
                "pim": pim.model_copy(
                    update={
                        "queue_url": self.queue_url,
                        "notification_url": f"{self.webhook.url}/graph/notifications",
                        "lifecycle_url": f"{self.webhook.url}/graph/lifecycle",
                        "client_state": pim.client_state or secrets.token_urlsafe(24),
                        "client_state_arn": None,
                        "scheduler_group": self.schedule_group,
                        "scheduler_role_arn": f"arn:aws:iam::{ACCOUNT}:role/idsync-scheduler",
                        "expiry_function_arn": f"arn:aws:lambda:{_region()}:{ACCOUNT}:function:idsync-jit-expiry",
                    }
                )
            }
        )
        self._environment()
        self.emulator.app.pim.clock = self.clock
        bucket = None if self.settings.state.backend == "dynamodb" else MemoryBucketStore()
        self.service = build_jit_service(self.settings, clock=self.clock, state=self.state, bucket_store=bucket)
        jit_worker.use(build_jit_worker(self.settings, service=self.service))
        jit_expiry.use(self.service)
        pim_poller.use(build_pim_poller(self.settings, service=self.service))
        self._restore.append(lambda: (jit_worker.use(None), jit_expiry.use(None), pim_poller.use(None)))
        if not self.webhook_down:
            subscriptions = build_subscriptions_service(self.settings, clock=self.clock, state=self.service.state)
            report = subscriptions.ensure()
            if report.failed:
                raise RuntimeError(f"the Graph subscriptions could not be created: {report.failed}")
        loops: list[tuple[Callable[[], None], str]] = [
            (self._work, "local-jit-worker"),
            (self._schedule, "local-jit-scheduler"),
        ]
        if self.poll_seconds is not None:
            loops.append((self._poll, "local-pim-poller"))
        for target, name in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _environment(self) -> None:
        """The webhook handler builds its service from the environment, as in Lambda."""
        saved = {name: os.environ.get(name) for name in (SETTINGS_ENV, "POWERTOOLS_METRICS_DISABLED")}
        os.environ[SETTINGS_ENV] = self.settings.model_dump_json()
        if self.quiet:
            os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
        webhook.service.cache_clear()
        idsync_logger = logging.getLogger("idsync")
        level = idsync_logger.level
        if self.quiet:
            idsync_logger.setLevel(logging.WARNING)

        def restore() -> None:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            webhook.service.cache_clear()
            idsync_logger.setLevel(level)

        self._restore.append(restore)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        while self._restore:
            self._restore.pop()()

    # ------------------------------------------------------------------ the loops

    def _work(self) -> None:
        """Lambda's SQS event source mapping: receive, invoke, delete what the batch did not report failed."""
        sqs = boto3.client("sqs")
        arn = f"arn:aws:sqs:{_region()}:{ACCOUNT}:{self.queue_url.rsplit('/', 1)[-1]}"
        while not self._stop.is_set():
            try:
                messages = sqs.receive_message(
                    QueueUrl=self.queue_url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
                ).get("Messages", [])
            except Exception as error:  # the loop outlives a hiccup of the local AWS
                self.errors.append(f"receive: {error}")
                self._stop.wait(0.5)
                continue
            if not messages:
                self._stop.wait(POLL_SECONDS)
                continue
            event = {"Records": [_record(m, arn) for m in messages]}
            self.batches += 1
            try:
                answer = invoke(jit_worker, event, "idsync-jit-worker", self.quiet)
            except Exception as error:  # a failed invocation leaves the batch on the queue
                self.errors.append(f"worker: {error}")
                continue
            failed = {item["itemIdentifier"] for item in answer["batchItemFailures"]}
            for message in messages:
                if message["MessageId"] not in failed:
                    sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])

    def _poll(self) -> None:
        """EventBridge's rate schedule of the PIM poller: one invocation every ``poll_seconds``."""
        assert self.poll_seconds is not None
        due = time.monotonic() + self.poll_seconds
        # a rate schedule fires every interval, however long the previous invocation took
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            try:
                invoke(pim_poller, {}, "idsync-pim-poller", self.quiet)
            except Exception as error:  # a failed poll is repeated by the next tick
                self.errors.append(f"poller: {error}")
            self.polls += 1
            due = max(due + self.poll_seconds, time.monotonic())

    def _schedule(self) -> None:
        """EventBridge Scheduler: fire each due one-time schedule once, deleting it (ActionAfterCompletion)."""
        scheduler = boto3.client("scheduler")
        known: dict[str, tuple[datetime | None, dict[str, Any]]] = {}
        while not self._stop.is_set():
            try:
                names = [
                    item["Name"]
                    for page in scheduler.get_paginator("list_schedules").paginate(GroupName=self.schedule_group)
                    for item in page["Schedules"]
                ]
                for name in names:
                    if name not in known:
                        detail = scheduler.get_schedule(Name=name, GroupName=self.schedule_group)
                        known[name] = (parse_at(detail["ScheduleExpression"]), json.loads(detail["Target"]["Input"]))
                    at, event = known[name]
                    if at is not None and at <= self.clock.now():
                        known.pop(name)
                        try:
                            scheduler.delete_schedule(Name=name, GroupName=self.schedule_group)
                        except scheduler.exceptions.ResourceNotFoundException:
                            continue  # deleted since the listing (an expiry cleared it): it never fires
                        self.fired.append(self._fire(name, at, event))
            except Exception as error:  # the loop outlives a hiccup of the local AWS
                self.errors.append(f"scheduler: {error}")
            self._stop.wait(SCHEDULER_POLL_SECONDS)

    def _fire(self, name: str, at: datetime, event: dict[str, Any]) -> Fired:
        fired_at, started = time.time(), time.perf_counter()
        try:
            result = invoke(jit_expiry, event, "idsync-jit-expiry", self.quiet)
        except Exception as error:  # reported, as Scheduler's invocation record would
            return Fired(name, at, event, fired_at, time.perf_counter() - started, None, str(error))
        return Fired(name, at, event, fired_at, time.perf_counter() - started, result)

    # ------------------------------------------------------------------ driving and watching

    def activate(self, group_id: str, user_id: str, minutes: float = 60.0) -> dict[str, Any]:
        """Activate a PIM membership in the emulator (Graph then notifies the webhook)."""
        return self.emulator.app.pim.activate(group_id, user_id, minutes)

    def deactivate(self, group_id: str, user_id: str) -> None:
        self.emulator.app.pim.deactivate(group_id, user_id)

    def member(self, group_id: str, user_id: str) -> bool:
        """Whether IAM Identity Center holds the membership idsync recorded."""
        assert self.service is not None
        grants: GrantStore = self.service.grants
        owned = grants.owned_memberships(group_id).get(user_id)
        group, user = grants.owned_group(group_id), grants.owned_user(user_id)
        if owned is None or group is None or user is None:
            return False
        found = self.service.target.find_membership(group.target_id, user.target_id)
        return found == owned.membership_id

    def _recorded(self, group_id: str, user_id: str) -> bool:
        assert self.service is not None
        return user_id in self.service.grants.owned_memberships(group_id)

    def wait_applied(self, group_id: str, user_id: str, timeout: float = 10.0) -> Applied:
        """Wait until the membership is present; timed from the notification that carried the activation.

        Raises TimeoutError.
        """
        present_at = _wait(lambda: self._recorded(group_id, user_id), timeout, f"{user_id} added to {group_id}")
        if not self.member(group_id, user_id):
            raise RuntimeError(f"membership {group_id} <- {user_id} recorded but not in IAM Identity Center")
        delivery = self.emulator.app.pim.wait_for(lambda d: _carries(d.items, group_id, user_id, added=True))
        return Applied(delivery.sent_at, present_at)

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until no hint is on the queue: visible, in flight or delayed. Raises TimeoutError."""
        sqs = boto3.client("sqs")
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]

        def idle() -> bool:
            counts = sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=names)["Attributes"]
            return all(counts[name] == "0" for name in names)

        _wait(idle, timeout, "the hint queue to drain", interval=0.05)

    def wait_fired(self, count: int, timeout: float = 10.0) -> list[Fired]:
        """Wait until ``count`` expiry schedules have fired (and returned); returns them. Raises TimeoutError."""
        _wait(lambda: len(self.fired) >= count, timeout, f"{count} expiry schedule(s) to fire")
        return list(self.fired)

    def wait_removed(self, group_id: str, user_id: str, timeout: float = 10.0) -> float:
        """Wait until the membership is gone; returns when (time.time()). Raises TimeoutError."""
        return _wait(lambda: not self._recorded(group_id, user_id), timeout, f"{user_id} removed from {group_id}")


def _record(message: dict[str, Any], arn: str) -> dict[str, Any]:
    """An SQS message as Lambda's event source mapping hands it to the function."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": {},
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": arn,
        "awsRegion": _region(),
    }


def _carries(items: list[dict[str, Any]], group_id: str, user_id: str, added: bool) -> bool:
    for item in items:
        data = item.get("resourceData") or {}
        if data.get("id") != group_id:
            continue
        for member in data.get("members@delta", []):
            if member.get("id") == user_id and ("@removed" not in member) == added:
                return True
    return False


def _wait(done: Callable[[], bool], timeout: float, what: str, interval: float = 0.002) -> float:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return time.time()
