"""The `idsync` command against the local world: what it prints, what it exits with, what it changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from idsync.cli import EXIT_CONFIG, EXIT_FAILURES, EXIT_OK, main
from sandbox.graph_emulator import GraphEmulator
from sandbox.tenant import CLIENT_SECRET, SERVICE_PRINCIPAL_ID, Tenant
from tests.e2e.conftest import IdentityCenter


@pytest.fixture
def config(emulator: GraphEmulator, tmp_path: Path, identity_store_id: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IDSYNC_CLIENT_SECRET", CLIENT_SECRET)
    path = tmp_path / "idsync.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "graph": emulator.graph_config(),
                "scope": {"mode": "assigned", "service_principal_id": SERVICE_PRINCIPAL_ID},
                "identity_store": {"region": "us-east-1"},
                "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
            }
        )
    )
    return path


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def test_plan_then_sync_then_nothing_to_do(
    config: Path, capsys: pytest.CaptureFixture[str], identity_center: IdentityCenter
) -> None:
    code, plan = run_json(capsys, "--config", str(config), "plan", "--json")
    assert code == EXIT_OK
    assert identity_center.users() == {}  # plan writes nothing
    planned_users = sum(1 for op in plan["operations"] if op["kind"] == "user" and op["action"] == "create")
    code, report = run_json(capsys, "--config", str(config), "sync", "--json")
    assert code == EXIT_OK
    assert report["counts"]["user"]["create"] == planned_users == len(identity_center.users())
    assert len(report["refusals"]) == 13
    code, again = run_json(capsys, "--config", str(config), "sync", "--json")
    assert code == EXIT_OK
    assert again["writes"] == 0
    assert again["mode"] == "delta"


def test_status_logs_and_explain(
    config: Path, capsys: pytest.CaptureFixture[str], tenant: Tenant, identity_center: IdentityCenter
) -> None:
    main(["--config", str(config), "sync", "--json"])
    capsys.readouterr()
    code, status = run_json(capsys, "--config", str(config), "status", "--json")
    assert code == EXIT_OK
    assert status["last"]["status"] == "complete"
    assert status["quarantine"] is None
    assert (status["totals"]["users"], status["totals"]["groups"]) == (
        len(identity_center.users()),
        len(identity_center.groups()),
    )
    assert status["drift"] is None  # the initial sync is a full cycle: no drift slice yet
    main(["--config", str(config), "sync", "--json"])  # a delta cycle reads the drift check's first slice
    capsys.readouterr()
    code, status = run_json(capsys, "--config", str(config), "status", "--json")
    assert status["drift"]["lastSlice"] is not None
    assert status["drift"]["roundStarted"] == status["drift"]["lastSlice"]
    assert main(["--config", str(config), "status"]) == EXIT_OK
    assert f"drift check: round under way since {status['drift']['roundStarted']}" in capsys.readouterr().out
    code, logs = run_json(capsys, "--config", str(config), "logs", "--status", "skipped", "--json", "--limit", "50")
    assert code == EXIT_OK
    assert {row["sourceIdentity"] for row in logs} == set(tenant.expected_refusals)
    refused = next(iter(tenant.expected_refusals))
    code, explained = run_json(capsys, "--config", str(config), "plan", "--explain", refused, "--json")
    assert code == EXIT_OK
    assert explained["assignmentScope"] == "in scope"
    assert "refused" in explained["mapping"]
    assert explained["operations"] == []


def test_config_check_prints_the_effective_mapping(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, payload = run_json(capsys, "--config", str(config), "config", "check", "--json")
    assert code == EXIT_OK
    targets = {row["target"] for row in payload["users"]}
    assert {"userName", "name.givenName", 'emails[type eq "work"].value', "active"} <= targets


def test_a_bad_configuration_exits_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"graph": {"tenant_id": "t", "client_id": "c"}, "scope": {"mode": "sometimes"}}))
    assert main(["--config", str(path), "sync"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "scope.mode" in err


def test_provision_on_demand_from_the_cli(
    config: Path, capsys: pytest.CaptureFixture[str], tenant: Tenant, identity_center: IdentityCenter
) -> None:
    refused = next(iter(tenant.expected_refusals))
    upn = tenant.users[refused]["userPrincipalName"]
    assert main(["--config", str(config), "provision", "--user", upn]) == EXIT_FAILURES  # refused, with reason
    assert upn not in identity_center.users()
    good = sorted(
        u["userPrincipalName"]
        for uid, u in tenant.users.items()
        if uid in tenant.assignments[SERVICE_PRINCIPAL_ID]
        and uid not in tenant.expected_refusals
        and u.get("accountEnabled", True)
    )[0]
    assert main(["--config", str(config), "provision", "--user", good]) == EXIT_OK
    assert good in identity_center.users()


def test_a_mapping_change_triggers_a_full_reconcile_with_exactly_the_implied_updates(
    config: Path, capsys: pytest.CaptureFixture[str], identity_center: IdentityCenter
) -> None:
    main(["--config", str(config), "sync", "--json"])
    capsys.readouterr()
    titles = {name: user["Title"] for name, user in identity_center.users().items() if user.get("Title")}
    with_title = {name for name, title in titles.items() if title != title.upper()}  # "CEO" needs no update
    data = yaml.safe_load(config.read_text())
    data["mapping"] = {"users": [{"target": "title", "expression": "ToUpper([jobTitle])"}]}
    config.write_text(yaml.safe_dump(data))
    code, report = run_json(capsys, "--config", str(config), "sync", "--json")
    assert code == EXIT_OK
    assert report["mode"] == "full"
    assert report["counts"] == {"user": {"update": len(with_title)}}
    assert report["writes"] == len(with_title)
    assert with_title
    held = identity_center.users()
    for name, title in titles.items():
        assert held[name]["Title"] == title.upper()


def test_plan_names_every_deletion_the_guard_holds_back(
    config: Path, capsys: pytest.CaptureFixture[str], tenant: Tenant, identity_center: IdentityCenter
) -> None:
    # Given a provisioned tenant whose app assignments all disappear (everyone would be deleted)
    main(["--config", str(config), "sync", "--json"])
    capsys.readouterr()
    provisioned = len(identity_center.users())
    for principal in list(tenant.assignments[SERVICE_PRINCIPAL_ID]):
        tenant.unassign(principal)
    # When an administrator looks before running --allow-deletions
    code, plan = run_json(capsys, "--config", str(config), "plan", "--json")
    # Then the plan names each held-back deletion, memberships included, as many as the guard reports
    assert code == 3
    held = plan["heldBack"]
    assert f"none of these {len(held)} deletions" in plan["deletionGuard"]
    assert plan["deletionGuardDetail"]["tripped"] == ["deletions"]
    assert plan["deletionGuardDetail"]["deletions"] == sum(1 for op in held if op["kind"] in ("user", "group"))
    assert sum(1 for op in held if op["kind"] == "user") == provisioned
    assert any(op["kind"] == "membership" for op in held)
    assert all(op["action"] == "delete" for op in held)
    # and the text output lists them by name
    code = main(["--config", str(config), "plan"])
    text = capsys.readouterr().out
    assert code == 3
    assert f"held back by the deletion guard ({len(held)}, not applied):" in text
    assert next(op["name"] for op in held if op["kind"] == "user") in text
    assert len(identity_center.users()) == provisioned
