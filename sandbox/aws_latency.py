"""Latency and throttling for an in-process AWS emulator: any boto3 client, any service.

Real AWS calls take tens of milliseconds and a service refuses calls above its rate; moto answers at
once and never refuses. ``LatencyLayer.attach(client)`` makes every request the client sends (each
retry too) first wait a latency drawn around a median (log-normal, so a few calls are slow), and
answers ThrottlingException, shaped as AWS shapes it (HTTP 400 and the service protocol's error
body), to requests above ``rate`` a second (a token bucket of ``burst`` tokens, as AWS meters).

Time is injectable: with a virtual clock (``now``) and a ``sleep`` that advances it, a benchmark of
thousands of calls runs in seconds and still measures the seconds it would take. The layer registers
itself first on ``before-send``, so it runs before moto's own handler (which then answers the request)
and after a rate budget attached earlier (which therefore waits before the request "leaves").

``attach_to_new_clients(layer)`` puts one layer in front of every IAM Identity Center client (Identity
Store and sso-admin, which share its rate) the process creates from then on, wherever the code that
creates it lives: the sandbox's way to slow the real engine down without a line of it knowing.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import botocore.session
from botocore.awsrequest import AWSResponse

IDENTITY_CENTER_SERVICES = ("identitystore", "sso-admin")  # one rate limit for both


class _Raw:
    """A response body botocore can read."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


@dataclass
class LayerStats:
    calls: int = 0  # requests that reached the service (answered by the emulator)
    throttled: int = 0
    waited: float = 0.0  # seconds of latency slept
    by_operation: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "throttled": self.throttled,
            "waited": round(self.waited, 3),
            "by_operation": dict(sorted(self.by_operation.items())),
        }


def throttling_response(protocol: str, url: str, message: str = "Rate exceeded") -> AWSResponse:
    """An HTTP 400 ThrottlingException as a service of ``protocol`` answers it."""
    if protocol in ("json", "rest-json"):
        body = json.dumps({"__type": "ThrottlingException", "message": message}).encode()
        headers = {"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": "ThrottlingException"}
    else:
        body = (
            "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>"
            f"<Message>{message}</Message></Error><RequestId>0</RequestId></ErrorResponse>"
        ).encode()
        headers = {"Content-Type": "text/xml"}
    return AWSResponse(url, 400, headers, _Raw(body))


class LatencyLayer:
    """Per-request latency around ``median`` seconds, and throttling above ``rate`` requests a second.

    ``sigma`` is the log-normal spread (0: every call takes exactly ``median``); ``rate`` None never
    throttles. Thread-safe; ``stats`` counts what happened.
    """

    def __init__(
        self,
        median: float = 0.03,
        sigma: float = 0.4,
        rate: float | None = 20.0,
        burst: int = 20,
        now: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = 0,
    ) -> None:
        if median < 0 or sigma < 0 or (rate is not None and rate <= 0) or burst < 1:
            raise ValueError("latency layer: median and sigma must be >= 0, rate > 0 and burst >= 1")
        self.median = median
        self.sigma = sigma
        self.rate = rate
        self.burst = burst
        self._now = now
        self._sleep = sleep
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._updated: float | None = None
        self.stats = LayerStats()

    def latency(self) -> float:
        """One call's latency in seconds."""
        with self._lock:
            if self.median == 0:
                return 0.0
            return self.median * math.exp(self._random.gauss(0.0, self.sigma)) if self.sigma else self.median

    def _admit(self) -> bool:
        """Take a token of the service's bucket at the arrival of a request; False: throttled."""
        if self.rate is None:
            return True
        with self._lock:
            now = self._now()
            if self._updated is not None:
                self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            if self._tokens >= 1.0 - 1e-9:  # float rounding must not turn an exact rate into a throttle
                self._tokens -= 1.0
                return True
            return False

    def attach(self, client: Any) -> None:
        """Put the layer in front of every request ``client`` sends."""
        service = client.meta.service_model.service_id.hyphenize()
        protocol = client.meta.service_model.protocol

        def before_send(request: Any, **kwargs: Any) -> AWSResponse | None:
            admitted = self._admit()
            delay = self.latency()
            self._sleep(delay)
            operation = str(kwargs.get("event_name", "")).rsplit(".", 1)[-1]
            with self._lock:
                self.stats.waited += delay
                if not admitted:
                    self.stats.throttled += 1
                    return throttling_response(protocol, request.url)
                self.stats.calls += 1
                self.stats.by_operation[operation] = self.stats.by_operation.get(operation, 0) + 1
            return None

        client.meta.events.register_first(f"before-send.{service}", before_send, unique_id=f"latency-{id(self)}")


def attach_to_new_clients(
    layer: LatencyLayer, services: Iterable[str] = IDENTITY_CENTER_SERVICES
) -> Callable[[], None]:
    """Attach ``layer`` to every client of ``services`` any botocore session of this process creates from now
    on; returns the function that stops it (clients already made keep the layer)."""
    wanted = frozenset(services)
    original = botocore.session.Session.create_client

    def create_client(self: botocore.session.Session, service_name: str, *args: Any, **kwargs: Any) -> Any:
        client = original(self, service_name, *args, **kwargs)
        if service_name in wanted:
            layer.attach(client)
        return client

    botocore.session.Session.create_client = create_client

    def stop() -> None:
        botocore.session.Session.create_client = original

    return stop
