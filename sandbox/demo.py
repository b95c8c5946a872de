"""`make demo`: the whole product on this machine, against local emulators.

Starts the Graph emulator (a sample Entra tenant over HTTPS) and moto_server (AWS on 127.0.0.1),
then drives the real `idsync` command: test-connection, plan, sync, a second sync that changes
nothing, a few changes in Entra and a delta sync that applies exactly them, the provisioning log,
and a readable summary. Everything it starts, it stops.

``--latency-ms N`` and ``--aws-rate R`` (``make demo LATENCY_MS=50 AWS_RATE=20``) put the sandbox's latency and
throttle layer (``sandbox.aws_latency``) in front of every IAM Identity Center call: each takes about N ms, and
above R calls a second AWS's ThrottlingException answers, which idsync retries. Every `idsync` command runs
through ``sandbox.latency_run`` with its own layer (the demo runs one at a time); the PIM part's in-process
functions share one. The summary counts the calls, the throttles and the latency waited.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from idsync.adapters.sqlite_state import SqliteStateStore
from idsync.config import load_settings
from sandbox import latency_run, moto_ext, moto_server
from sandbox.aws_latency import LatencyLayer, attach_to_new_clients
from sandbox.graph_emulator import GraphEmulator
from sandbox.jit_local import LocalJit
from sandbox.tenant import CLIENT_SECRET, SERVICE_PRINCIPAL_ID, Tenant, sample_tenant

WORKDIR = Path(".demo")
LATENCY_STATS = "aws-latency.jsonl"
PIM_GROUP = "AWS PIM Production Admin"


class ManualClock:
    """Wall time until moved forward: lets the demo reach a grant's end without waiting an hour."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


class DemoFailure(Exception):
    """A step did not do what the demo promises."""


def banner(text: str) -> None:
    """A section title: bold on a terminal, plain text when piped."""
    bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")
    print(f"\n{bold}== {text}{plain}", flush=True)


def cli(env: dict[str, str]) -> list[str]:
    """The command that runs `idsync`: through the latency layer when ``env`` asks for it."""
    if latency_run.layer_from(env) is not None:
        return [sys.executable, "-m", "sandbox.latency_run", "idsync.cli"]
    return [sys.executable, "-m", "idsync.cli"]


def idsync(config: Path, env: dict[str, str], *args: str, expect: tuple[int, ...] = (0,)) -> None:
    """Run the real CLI as an administrator would, its output shown as is."""
    command = [*cli(env), "--config", str(config), *args]
    print(f"$ idsync {' '.join(args)}", flush=True)
    result = subprocess.run(command, env=env, check=False)
    if result.returncode not in expect:
        raise DemoFailure(f"`idsync {' '.join(args)}` exited {result.returncode}, expected {expect}")


def read_json(config: Path, env: dict[str, str], *args: str) -> Any:
    """What `idsync ... --json` answers, read quietly for the demo's own sentences and checks."""
    command = [*cli(env), "--config", str(config), *args, "--json"]
    result = subprocess.run(command, env=env, text=True, capture_output=True, check=False)
    if result.returncode != 0:
        raise DemoFailure(f"`idsync {' '.join(args)} --json` exited {result.returncode}: {result.stderr.strip()}")
    return json.loads(result.stdout)


def scope_sentence(tenant: Tenant, refused: int, created: int) -> str:
    """Why the first sync creates the users it creates, as Entra's assignment scope decides."""
    assigned = tenant.assignments[SERVICE_PRINCIPAL_ID]
    direct = {p for p in assigned if p in tenant.users}
    through = {m for g in assigned if g in tenant.groups for m in tenant.members[g] if m in tenant.users}
    in_scope = direct | through
    disabled = sum(1 for u in in_scope if not tenant.users[u].get("accountEnabled", True))
    groups = sum(1 for g in assigned if g in tenant.groups)
    return (
        f"why {created} of {len(tenant.users)} users: {len(in_scope)} are in scope (assigned to the AWS IAM "
        f"Identity Center app directly ({len(direct)}) or as members of its {groups} "
        f"assigned groups); the other {len(tenant.users) - len(in_scope)} are not assigned, so out of scope as "
        f"in Entra. Of those in scope, {disabled} are disabled (never created) and {refused} break an IAM "
        "Identity Center rule (refused, listed above)."
    )


def write_config(emulator: GraphEmulator, aws_endpoint: str, pim_group: str) -> Path:
    WORKDIR.mkdir(exist_ok=True)
    for stale in WORKDIR.glob("state.db*"):
        stale.unlink()
    config = {
        "graph": emulator.graph_config(),
        "scope": {"mode": "assigned", "service_principal_id": SERVICE_PRINCIPAL_ID},
        "identity_store": {"region": "us-east-1", "endpoint_url": aws_endpoint},
        "state": {"backend": "sqlite", "path": str(WORKDIR / "state.db")},
        "pim": {"groups": [pim_group]},
    }
    path = WORKDIR / "idsync.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "IDSYNC_CLIENT_SECRET": CLIENT_SECRET,  # the sandbox tenant's own secret, never a real one
            "AWS_ACCESS_KEY_ID": "demo",
            "AWS_SECRET_ACCESS_KEY": "demo",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "PYTHONPATH": os.pathsep.join(filter(None, ["lambdas", env.get("PYTHONPATH", "")])),
        }
    )
    env.pop("AWS_PROFILE", None)
    return env


def latency_env(latency_ms: float | None, aws_rate: float | None) -> dict[str, str]:
    """The environment that puts the latency layer in front of every `idsync` command (empty: no layer).

    Raises ValueError for a latency below 0 or a rate not above 0.
    """
    if latency_ms is None and aws_rate is None:
        return {}
    env = {
        latency_run.LATENCY_MS: str(latency_ms or 0),
        latency_run.STATS: str((WORKDIR / LATENCY_STATS).resolve()),
    }
    if aws_rate is not None:
        env[latency_run.AWS_RATE] = str(aws_rate)
    latency_run.layer_from(env)  # validates
    return env


def latency_sentence(env: dict[str, str], in_process: LatencyLayer | None) -> str:
    """What the latency layer did across every command and the PIM part: calls, throttles, time waited."""
    total = latency_run.read_stats(Path(env[latency_run.STATS]))
    if in_process is not None:
        total["calls"] += in_process.stats.calls
        total["throttled"] += in_process.stats.throttled
        total["waited"] += in_process.stats.waited
    return (
        f"AWS latency layer: {total['calls']} IAM Identity Center calls answered, {total['throttled']} answered "
        f"ThrottlingException (retried by idsync), {total['waited']:.1f} s of latency waited"
    )


def described(counts: dict[str, dict[str, int]]) -> str:
    return ", ".join(f"{n} {kind} {action}" for kind, a in counts.items() for action, n in a.items()) or "no change"


def summary(first: dict[str, Any], second: dict[str, Any], third: dict[str, Any], status: dict[str, Any]) -> None:
    banner("Summary")
    counts = first["counts"]
    print(
        f"first sync ({first['mode']}): created {counts.get('user', {}).get('create', 0)} users, "
        f"{counts.get('group', {}).get('create', 0)} groups, "
        f"{counts.get('membership', {}).get('create', 0)} memberships ({first['writes']} writes)"
    )
    print(f"second sync ({second['mode']}): {second['writes']} writes")
    print(f"after changes in Entra ({third['mode']}): {described(third['counts'])} ({third['writes']} writes)")
    totals = status["totals"]
    print(f"managed now: {totals['users']} users, {totals['groups']} groups, {totals['memberships']} memberships")
    print(f"refused ({len(status['refusals'])} users break an IAM Identity Center rule; each failed alone):")
    for message in status["refusals"]:
        print(f"  - {message}")


def pim_activation(
    tenant: Tenant,
    emulator: GraphEmulator,
    config: Path,
    endpoint: str,
    group: str,
    refused: set[str],
    layer: LatencyLayer | None = None,
) -> str:
    """One PIM for Groups activation end to end, then its expiry at the grant's end time (its IAM Identity
    Center calls behind ``layer`` when given)."""
    banner(f"PIM for Groups: an activation in '{PIM_GROUP}', applied within seconds, removed at its end")
    os.environ.update(child_env() | {"AWS_ENDPOINT_URL": endpoint})
    stop = attach_to_new_clients(layer) if layer is not None else None
    try:
        return _activate_and_expire(tenant, emulator, config, group, refused)
    finally:
        if stop is not None:
            stop()


def _activate_and_expire(tenant: Tenant, emulator: GraphEmulator, config: Path, group: str, refused: set[str]) -> str:
    settings = load_settings(config)
    state = SqliteStateStore(settings.state.path)
    owned = state.load_ownership().users
    user = next(
        u
        for u, obj in sorted(tenant.users.items())
        if obj.get("accountEnabled", True) and u not in refused and u not in owned and obj.get("givenName")
    )
    upn = tenant.users[user]["userPrincipalName"]
    clock = ManualClock()
    emulator.app.pim.auto_expire = False  # Entra drops the member late: the scheduled expiry must not wait for it
    with LocalJit(emulator, settings, clock=clock, state=state) as jit:
        print(f"{upn} (not yet in IAM Identity Center) activates '{PIM_GROUP}' for 60 minutes")
        activated = time.time()
        jit.activate(group, user, minutes=60)
        applied = jit.wait_applied(group, user, timeout=30)
        print(
            f"applied {applied.latency:.2f} s after Graph's change notification reached the webhook "
            f"({applied.present_at - activated:.2f} s after the activation here, where the emulator notifies at "
            "once): the user was provisioned and added to the group"
        )
        clock.advance(61 * 60)
        print("61 minutes later (a moved clock): the grant has ended")
        jit.wait_removed(group, user, timeout=30)
        fired = jit.wait_fired(1)[0]
        print(f"the one-time expiry schedule for {fired.at.isoformat()} fired and removed the membership")
        if jit.errors:
            raise DemoFailure(f"the JIT flow reported errors: {jit.errors}")
    return (
        f"PIM activation: membership present {applied.latency:.2f} s after Graph's notification reached the "
        "webhook. That is idsync's own share; from an activation in a real tenant add Graph's delivery of the "
        "notification (not measured here: the emulator sends it at once). Entra's provisioning takes 2-10 "
        "minutes from the activation. Removal: at the grant's end time (Entra: up to 40 minutes late)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description="idsync end to end against local emulators")
    parser.add_argument("--latency-ms", type=float, help="median latency of an IAM Identity Center call (ms)")
    parser.add_argument("--aws-rate", type=float, help="calls a second above which AWS answers ThrottlingException")
    args = parser.parse_args(argv)
    try:
        latency = latency_env(args.latency_ms, args.aws_rate)
    except ValueError as error:
        parser.error(str(error))
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto_server's request lines
    tenant = sample_tenant()
    moto_ext.install()
    server, endpoint = moto_server.start()
    emulator = GraphEmulator(tenant).start()
    try:
        pim_group = next(g for g, obj in tenant.groups.items() if obj["displayName"] == PIM_GROUP)
        config = write_config(emulator, endpoint, pim_group)
        (WORKDIR / LATENCY_STATS).unlink(missing_ok=True)
        env = child_env() | latency
        layer = latency_run.layer_from(latency)
        banner("Local emulators")
        print(
            f"Graph emulator (sample Entra tenant, {len(tenant.users)} users, {len(tenant.groups)} groups): "
            f"{emulator.graph_url}"
        )
        print(f"moto_server (AWS IAM Identity Center): {endpoint}")
        if layer is not None:
            limit = f"ThrottlingException above {layer.rate:g} calls a second" if layer.rate else "no throttling"
            print(f"AWS latency layer: {layer.median * 1000:g} ms median per IAM Identity Center call, {limit}")

        banner("Test connection (like Entra's Test Connection button)")
        idsync(config, env, "test-connection")

        banner("Plan: what the first sync would change")
        idsync(config, env, "plan")

        banner("Sync")
        started = time.perf_counter()
        idsync(config, env, "sync")
        first = read_json(config, env, "status")["last"]
        print(f"first sync applied {first['writes']} writes in {time.perf_counter() - started:.1f} s")
        created = first["counts"].get("user", {}).get("create", 0)
        print(scope_sentence(tenant, first["refusals"], created))

        banner("Sync again: nothing changed in Entra, so nothing is written")
        idsync(config, env, "sync")
        second = read_json(config, env, "status")["last"]
        if second["writes"] != 0:
            raise DemoFailure(f"the second sync wrote {second['writes']} times; expected none")

        banner("Changes in Entra: a title, a disabled user, a new hire in a group")
        assigned = sorted(g for g in tenant.assignments[SERVICE_PRINCIPAL_ID] if g in tenant.groups)
        refused = set(tenant.expected_refusals)
        people = sorted(
            {
                m
                for g in assigned
                for m in tenant.members[g]
                if m in tenant.users and tenant.users[m].get("accountEnabled", True) and m not in refused
            }
        )
        people = [tenant.users[m] for m in people]
        tenant.update_user(people[3]["id"], jobTitle="Staff Engineer")
        tenant.disable_user(people[5]["id"])
        hire = tenant.add_user(
            userPrincipalName="jamie.rivera@contoso.example",
            displayName="Jamie Rivera",
            givenName="Jamie",
            surname="Rivera",
            mail="jamie.rivera@contoso.example",
            accountEnabled=True,
        )
        tenant.add_member(assigned[0], hire)
        print(
            f"{people[3]['userPrincipalName']}: jobTitle -> Staff Engineer; {people[5]['userPrincipalName']}: "
            f"disabled; jamie.rivera@contoso.example: new, added to '{tenant.groups[assigned[0]]['displayName']}'"
        )
        idsync(config, env, "sync")
        third = read_json(config, env, "status")["last"]
        print(f"what this sync changed ({described(third['counts'])}), object by object:")
        idsync(config, env, "logs", "--cycle", third["cycleId"])

        banner("Status")
        idsync(config, env, "status")
        status = read_json(config, env, "status")

        jit = pim_activation(tenant, emulator, config, endpoint, pim_group, set(tenant.expected_refusals), layer)

        summary(first, second, third, status)
        print(jit)
        if layer is not None:
            print(latency_sentence(env, layer))
        return 0
    except DemoFailure as failure:
        print(f"\ndemo failed: {failure}", file=sys.stderr)
        return 1
    finally:
        emulator.stop()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
