"""`make demo` as a reader sees it when piped: what each sync changed, and why users were refused or out of scope."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from sandbox import demo, latency_run, moto_ext, moto_server
from sandbox.graph_emulator import GraphEmulator
from sandbox.tenant import scale_tenant

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_demo_explains_each_step(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "lambdas"), str(root)]), COLUMNS="80")
    for name in [n for n in env if n.startswith(("IDSYNC", "AWS_"))]:
        del env[name]
    result = subprocess.run(
        [sys.executable, "-m", "sandbox.demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in out  # piped: no escape codes
    assert "$ idsync sync\n" in out
    assert "--json" not in out  # every step shown is a command whose output is printed as is
    assert "ok   permissions granted: User.Read.All, GroupMember.Read.All, Application.Read.All, " in out
    assert (
        "why 86 of 300 users: 104 are in scope (assigned to the AWS IAM Identity Center app directly (17) or as "
        "members of its 12 assigned groups); the other 196 are not assigned, so out of scope as in Entra. Of those "
        "in scope, 5 are disabled (never created) and 13 break an IAM Identity Center rule (refused, listed above)."
    ) in out
    assert "Refused: 13 object(s) break an IAM Identity Center rule" in out
    assert out.count("Refused: 13 object(s)") == 2  # the plan and the first sync; not again on the no-op syncs
    assert "writes to IAM Identity Center: 0 (no change)" in out
    changes = out.split("== Changes in Entra")[1].split("== Status")[0]
    assert (
        "what this sync changed (1 user create, 1 user update, 1 user delete, 1 membership create, "
        "1 membership delete), object by object:"
    ) in changes
    assert "    Title: " in changes
    assert " -> Staff Engineer\n" in changes
    assert "create user jamie.rivera@contoso.example" in changes
    assert 'phoneNumbers[type eq "work"].value' in out  # brackets survive Rich
    assert max(len(line) for line in out.splitlines()) > 80  # piped: nothing wraps at 80 columns
    assert "after Graph's change notification reached the webhook" in out
    assert "Entra's provisioning takes 2-10 minutes from the activation" in out


@pytest.mark.slow
def test_the_demo_path_with_latency_on_completes_through_throttling_and_records_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a tiny tenant, the demo's emulators, and its latency layer at 20 ms a call and 4 calls a second
    monkeypatch.chdir(tmp_path)
    tenant = scale_tenant(users=12, groups=2, memberships=16)
    moto_ext.install()
    server, endpoint = moto_server.start()
    emulator = GraphEmulator(tenant).start()
    try:
        config = demo.write_config(emulator, endpoint, next(iter(tenant.groups)))
        latency = demo.latency_env(20, 4)
        env = demo.child_env() | latency | {"PYTHONPATH": os.pathsep.join([str(ROOT / "lambdas"), str(ROOT)])}
        assert demo.cli(env)[1:3] == ["-m", "sandbox.latency_run"]
        # When the demo's `idsync sync` and `idsync status` run
        demo.idsync(config, env, "sync")
        last = demo.read_json(config, env, "status")["last"]
        store = boto3.client(
            "identitystore",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="demo",
            aws_secret_access_key="demo",
        )
        ids = boto3.client(
            "sso-admin",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="demo",
            aws_secret_access_key="demo",
        ).list_instances()["Instances"][0]["IdentityStoreId"]
        held = store.list_users(IdentityStoreId=ids)["Users"]
    finally:
        emulator.stop()
        server.stop()
    # Then the sync completed: what it reports created is in Identity Center, nothing failed
    assert last["failures"] == 0
    created = last["counts"]["user"]["create"]
    assert created > 0
    assert len(held) == created
    assert last["counts"]["membership"]["create"] > 0
    # and each command recorded the layer's work: calls answered, throttles retried, latency waited
    stats = latency_run.read_stats(Path(latency[latency_run.STATS]))
    assert stats["processes"] == 2
    assert stats["throttled"] > 0
    assert stats["calls"] >= last["writes"]
    assert stats["waited"] >= 0.005 * stats["calls"]
    sentence = demo.latency_sentence(latency, None)
    assert f"{stats['calls']} IAM Identity Center calls answered, {stats['throttled']} answered" in sentence
