"""`make demo`: the whole product on this machine, against local emulators.

Starts the Graph emulator (a sample Entra tenant over HTTPS) and moto_server (AWS on 127.0.0.1),
then drives the real `idsync` command: test-connection, plan, sync, a second sync that changes
nothing, a few changes in Entra and a delta sync that applies exactly them, the provisioning log,
and a readable summary. Everything it starts, it stops.
"""

from __future__ import annotations

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
from sandbox import moto_ext, moto_server
from sandbox.graph_emulator import GraphEmulator
from sandbox.jit_local import LocalJit
from sandbox.tenant import CLIENT_SECRET, SERVICE_PRINCIPAL_ID, Tenant, sample_tenant

WORKDIR = Path(".demo")
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
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def idsync(config: Path, env: dict[str, str], *args: str, expect: tuple[int, ...] = (0,)) -> dict[str, Any] | None:
    """Run the real CLI; with --json, return its parsed output."""
    command = [sys.executable, "-m", "idsync.cli", "--config", str(config), *args]
    print(f"$ idsync {' '.join(args)}", flush=True)
    wants_json = "--json" in args
    result = subprocess.run(command, env=env, text=True, capture_output=wants_json, check=False)
    if wants_json and result.stderr:
        print(result.stderr, end="", file=sys.stderr)
    if result.returncode not in expect:
        if wants_json:
            print(result.stdout)
        raise DemoFailure(f"`idsync {' '.join(args)}` exited {result.returncode}, expected {expect}")
    return json.loads(result.stdout) if wants_json else None


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


def summary(first: dict[str, Any], second: dict[str, Any], third: dict[str, Any]) -> None:
    banner("Summary")
    counts = first["counts"]
    print(
        f"first sync ({first['mode']}):  created {counts.get('user', {}).get('create', 0)} users, "
        f"{counts.get('group', {}).get('create', 0)} groups, "
        f"{counts.get('membership', {}).get('create', 0)} memberships "
        f"({first['writes']} writes, {sum(first['calls']['graph'].values())} Graph requests)"
    )
    print(
        f"second sync ({second['mode']}): {second['writes']} writes, {sum(second['calls']['aws'].values())} AWS calls"
    )
    changed = third["counts"]
    described = ", ".join(f"{n} {kind} {action}" for kind, a in changed.items() for action, n in a.items())
    print(f"after changes in Entra ({third['mode']}): {described} ({third['writes']} writes)")
    print(f"refused ({len(first['refusals'])} users break an IAM Identity Center rule; each failed alone):")
    for refusal in first["refusals"]:
        print(f"  - {refusal['name']}: {refusal['attribute']}: {refusal['rule']}")


def pim_activation(
    tenant: Tenant, emulator: GraphEmulator, config: Path, endpoint: str, group: str, first: dict[str, Any]
) -> str:
    """One PIM for Groups activation end to end, then its expiry at the grant's end time."""
    banner(f"PIM for Groups: an activation in '{PIM_GROUP}', applied within seconds, removed at its end")
    os.environ.update(child_env() | {"AWS_ENDPOINT_URL": endpoint})
    settings = load_settings(config)
    state = SqliteStateStore(settings.state.path)
    owned = state.load_ownership().users
    refused = {r["sourceId"] for r in first["refusals"]}
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
        jit.activate(group, user, minutes=60)
        applied = jit.wait_applied(group, user, timeout=30)
        print(
            f"applied {applied.latency:.2f} s after Graph's change notification: the user was provisioned "
            "and added to the group"
        )
        clock.advance(61 * 60)
        print("61 minutes later (a moved clock): the grant has ended")
        jit.wait_removed(group, user, timeout=30)
        fired = jit.wait_fired(1)[0]
        print(f"the one-time expiry schedule for {fired.at.isoformat()} fired and removed the membership")
        if jit.errors:
            raise DemoFailure(f"the JIT flow reported errors: {jit.errors}")
    return (
        f"PIM activation: membership present {applied.latency:.2f} s after the notification "
        "(Entra: 2-10 minutes); removed at the grant's end time (Entra: up to 40 minutes late)"
    )


def main() -> int:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto_server's request lines
    tenant = sample_tenant()
    moto_ext.install()
    server, endpoint = moto_server.start()
    emulator = GraphEmulator(tenant).start()
    try:
        pim_group = next(g for g, obj in tenant.groups.items() if obj["displayName"] == PIM_GROUP)
        config = write_config(emulator, endpoint, pim_group)
        env = child_env()
        banner("Local emulators")
        print(
            f"Graph emulator (sample Entra tenant, {len(tenant.users)} users, {len(tenant.groups)} groups): "
            f"{emulator.graph_url}"
        )
        print(f"moto_server (AWS IAM Identity Center): {endpoint}")

        banner("Test connection (like Entra's Test Connection button)")
        idsync(config, env, "test-connection")

        banner("Plan: what the first sync would change")
        idsync(config, env, "plan")

        banner("Sync")
        started = time.perf_counter()
        first = idsync(config, env, "sync", "--json")
        assert first is not None
        print(f"first sync applied {first['writes']} writes in {time.perf_counter() - started:.1f} s")

        banner("Sync again: nothing changed in Entra, so nothing is written")
        second = idsync(config, env, "sync", "--json")
        assert second is not None
        if second["writes"] != 0:
            raise DemoFailure(f"the second sync wrote {second['writes']} times; expected none")
        print(f"{second['mode']} cycle: {second['writes']} writes, AWS calls: {second['calls']['aws'] or 'none'}")

        banner("Changes in Entra: a title, a disabled user, a new hire in a group")
        assigned = sorted(g for g in tenant.assignments[SERVICE_PRINCIPAL_ID] if g in tenant.groups)
        refused = {r["sourceId"] for r in first["refusals"]}
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
        third = idsync(config, env, "sync", "--json")
        assert third is not None

        banner("Provisioning log (latest entries)")
        idsync(config, env, "logs", "--limit", "8")
        banner("Status")
        idsync(config, env, "status")

        jit = pim_activation(tenant, emulator, config, endpoint, pim_group, first)

        summary(first, second, third)
        print(jit)
        return 0
    except DemoFailure as failure:
        print(f"\ndemo failed: {failure}", file=sys.stderr)
        return 1
    finally:
        emulator.stop()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
