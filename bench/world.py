"""The sync benchmarks' world: the Graph emulator serving the scale tenant from its own process, moto
in-process for AWS (Identity Store gaps filled), SQLite state in a temporary folder, and the engine built
by ``build_engine`` exactly as the CLI builds it.

The emulator runs in another process so that its CPU time and memory are not the engine's: on a small
machine it would otherwise compete with the engine for the interpreter lock, and its tenant would count
in the engine's peak RSS.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import pickle
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import boto3
import requests
from botocore import xform_name
from moto import mock_aws
from moto.identitystore.models import IdentityStoreBackend

from idsync.config import Settings, parse_settings
from idsync.services.cycle import CycleOptions, CycleOutcome
from idsync.wiring import Engine, build_engine
from sandbox import moto_ext
from sandbox.tenant import CLIENT_SECRET, SERVICE_PRINCIPAL_ID

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
T = TypeVar("T")
READ_PREFIXES = ("List", "Get", "Describe", "IsMember")
NEW_ID = {"CreateUser": "UserId", "CreateGroup": "GroupId", "CreateGroupMembership": "MembershipId"}
FAKE_AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


# --------------------------------------------------------------------------- the Graph emulator


class EmulatorProcess:
    """``python -m sandbox.graph_emulator --tenant scale`` on a free port, controlled by its admin API."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.process: subprocess.Popen[str] | None = None
        self.graph: dict[str, str] = {}

    def __enter__(self) -> EmulatorProcess:
        command = [sys.executable, "-m", "sandbox.graph_emulator", "--tenant", "scale", "--port", "0"]
        command += ["--tls-dir", str(self.folder / "emulator-tls")]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        printed = ""
        # the emulator prints its settings as one JSON document once it serves
        for line in self.process.stdout:
            printed += line
            try:
                self.graph = json.loads(printed)["graph"]
                break
            except json.JSONDecodeError:
                continue
        if not self.graph:
            self.__exit__()
            raise RuntimeError(f"the Graph emulator exited before serving; it printed: {printed!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None

    def admin(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """POST to the emulator's admin API; raises requests.HTTPError on a refusal."""
        response = requests.post(
            f"{self.graph['authority_host']}/_emulator/{path}",
            json=dict(body or {}),
            verify=self.graph["ca_bundle"],
            timeout=300,
        )
        response.raise_for_status()
        return response.json()

    def mutate(self, op: str, **args: Any) -> Any:
        """Change the tenant with one of its methods (update_user, add_member, ...)."""
        return self.admin("mutate", {"op": op, "args": args})["result"]

    def reset(self) -> None:
        """Serve a freshly built scale tenant again (and forget every delta token)."""
        self.admin("reset", {"kind": "scale"})


# --------------------------------------------------------------------------- AWS and the engine


@contextmanager
def fake_aws() -> Iterator[None]:
    """A fresh moto backend in-process, Identity Store gaps filled, with fake credentials."""
    saved = {name: os.environ.get(name) for name in [*FAKE_AWS_ENVIRONMENT, "AWS_PROFILE"]}
    os.environ.update(FAKE_AWS_ENVIRONMENT)
    os.environ.pop("AWS_PROFILE", None)
    moto_ext.install()
    try:
        with mock_aws():
            yield
    finally:
        moto_ext.clear_faults()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def settings(graph: Mapping[str, str], state_path: Path) -> Settings:
    """The configuration `idsync sync` would read: assigned scope, store id discovered, SQLite state."""
    return parse_settings(
        {
            "graph": {**graph, "client_secret": CLIENT_SECRET},
            "scope": {"mode": "assigned", "service_principal_id": SERVICE_PRINCIPAL_ID},
            # moto has no rate limit: the budget (at IAM Identity Center's 20/s) would measure itself
            "identity_store": {"region": REGION, "rate_per_second": 1_000_000.0},
            "state": {"backend": "sqlite", "path": str(state_path)},
        }
    )


def new_engine(graph: Mapping[str, str], state_path: Path) -> Engine:
    return build_engine(settings(graph, state_path), local=True)


def run_cycle(engine: Engine, options: CycleOptions | None = None) -> CycleOutcome:
    """One cycle; raises RuntimeError when it was skipped or an object failed (the figures would lie)."""
    outcome = engine.cycle.run(options or CycleOptions())
    if outcome.report is None:
        raise RuntimeError(f"the cycle did not run: {outcome.skipped}")
    if outcome.report.failures:
        first = outcome.report.failures[0]
        raise RuntimeError(f"{len(outcome.report.failures)} failure(s), first: {first.name}: {first.error}")
    return outcome


def is_read(operation: str) -> bool:
    return operation.startswith(READ_PREFIXES)


def reads_and_writes(calls: Mapping[str, int]) -> tuple[int, int]:
    """(reads, writes) among AWS calls counted by operation name."""
    reads = sum(n for op, n in calls.items() if is_read(op))
    return reads, sum(calls.values()) - reads


def graph_requests(calls: Mapping[str, int]) -> int:
    """Graph requests, the token endpoint left out."""
    return sum(n for key, n in calls.items() if key != "token")


def identitystore_client(engine: Engine) -> Any:
    return engine.target.client  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- the floor


class WriteRecorder:
    """Appends every Identity Store write a client makes (operation, parameters, id handed out) to a file,
    so that the floor can issue them again without the measured run holding them in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("wb")
        # the applier's pool calls from several threads: each pairs its own request with its answer
        self._calls = threading.local()
        self._lock = threading.Lock()

    @property
    def _pending(self) -> list[tuple[str, dict[str, Any]]]:
        if not hasattr(self._calls, "pending"):
            self._calls.pending = []
        pending: list[tuple[str, dict[str, Any]]] = self._calls.pending
        return pending

    def attach(self, client: Any) -> None:
        client.meta.events.register("provide-client-params.identitystore", self._params, unique_id="bench-params")
        client.meta.events.register("after-call.identitystore", self._answer, unique_id="bench-answer")

    def close(self) -> None:
        self._file.close()

    def _params(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if not is_read(model.name):
            self._pending.append((model.name, params))

    def _answer(self, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        if is_read(model.name):
            return
        name, params = self._pending.pop()
        if "Error" in parsed:
            return  # a refused write did not land: the floor issues only the writes that did
        created = NEW_ID.get(name)
        with self._lock:  # in the order the writes landed: the floor replays them so
            pickle.dump((name, params, parsed[created] if created else None), self._file, pickle.HIGHEST_PROTOCOL)


def recorded_writes(path: Path) -> Iterator[tuple[str, dict[str, Any], str | None]]:
    with path.open("rb") as file:
        while True:
            try:
                yield pickle.load(file)
            except EOFError:
                return


def _renamed(value: Any, ids: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return ids.get(value, value)
    if isinstance(value, Mapping):
        return {key: _renamed(item, ids) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_renamed(item, ids) for item in value]
    return value


def replay(path: Path) -> float:
    """Issue the recorded writes, in the same order, from a bare boto3 client against the current (fresh)
    moto backend. Returns the seconds spent inside the calls; ids the backend hands out are swapped in
    for the recorded ones between calls, outside the timed part."""
    instances = boto3.client("sso-admin", region_name=REGION).list_instances()["Instances"]
    client = boto3.client("identitystore", region_name=REGION)
    ids: dict[str, str] = {}
    seconds = 0.0
    for name, params, created in recorded_writes(path):
        ids.setdefault(params["IdentityStoreId"], instances[0]["IdentityStoreId"])
        call = getattr(client, xform_name(name))
        ready = _renamed(params, ids)
        started = time.perf_counter()
        answer = call(**ready)
        seconds += time.perf_counter() - started
        if created is not None:
            ids[created] = answer[NEW_ID[name]]
    return seconds


class BackendClock:
    """Seconds spent inside moto's Identity Store backend on writes (its in-memory storage work) while
    entered: the part of a run that stands for AWS's own service time, the same for any client."""

    WRITES = (
        "create_user",
        "update_user",
        "delete_user",
        "create_group",
        "update_group",
        "delete_group",
        "create_group_membership",
        "delete_group_membership",
    )

    def __init__(self) -> None:
        self.seconds = 0.0
        self._originals: dict[str, Any] = {}

    def __enter__(self) -> BackendClock:
        self._originals = {name: vars(IdentityStoreBackend)[name] for name in self.WRITES}
        for name, method in self._originals.items():
            setattr(IdentityStoreBackend, name, self._timed(method))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, method in self._originals.items():
            setattr(IdentityStoreBackend, name, method)

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed


# --------------------------------------------------------------------------- processes and memory


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def rss_mb() -> float:
    """This process's resident set size now."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        pages = int(statm.read().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def in_fresh_process(target: Callable[..., T], *args: Any) -> T:
    """Run ``target(*args)`` in a new interpreter (spawned, not forked) and return what it returns.

    Whatever ran before in this process leaves its memory and garbage behind; a fresh interpreter
    measures the time and peak RSS of ``target`` alone.
    """
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        result: T = pool.apply(target, args)
        return result
