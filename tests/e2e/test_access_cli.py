"""`idsync config check`, `plan`, `sync` and `access` with an access section, against the Graph emulator
and moto's sso-admin and organizations (asynchronous gaps filled by sandbox.moto_sso)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from idsync.cli import EXIT_CONFIG, EXIT_OK, main
from sandbox import moto_sso
from sandbox.graph_emulator import GraphEmulator
from sandbox.tenant import CLIENT_SECRET, SERVICE_PRINCIPAL_ID

GROUP = "AWS Developers"


@pytest.fixture
def aws_world(identity_store_id: str) -> dict[str, Any]:
    moto_sso.install()
    moto_sso.reset(polls_in_progress=1)
    orgs = boto3.client("organizations", region_name="us-east-1")
    orgs.create_organization(FeatureSet="ALL")
    root = orgs.list_roots()["Roots"][0]["Id"]
    ou = orgs.create_organizational_unit(ParentId=root, Name="Prod")["OrganizationalUnit"]["Id"]
    account = orgs.create_account(Email="prod@example.com", AccountName="prod")["CreateAccountStatus"]["AccountId"]
    orgs.move_account(AccountId=account, SourceParentId=root, DestinationParentId=ou)
    sso = boto3.client("sso-admin", region_name="us-east-1")
    instance = sso.list_instances()["Instances"][0]["InstanceArn"]
    sso.create_permission_set(Name="AdministratorAccess", InstanceArn=instance)
    return {"ou": ou, "account": account, "sso": sso, "instance": instance}


def write_config(tmp_path: Path, emulator: GraphEmulator, access: list[dict[str, Any]]) -> Path:
    path = tmp_path / "idsync.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "graph": emulator.graph_config(),
                "scope": {"mode": "assigned", "service_principal_id": SERVICE_PRINCIPAL_ID},
                "identity_store": {"region": "us-east-1"},
                "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
                "access": access,
            }
        )
    )
    return path


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def test_config_check_refuses_unknown_names_naming_each_field(
    emulator: GraphEmulator,
    tmp_path: Path,
    aws_world: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("IDSYNC_CLIENT_SECRET", CLIENT_SECRET)
    bad = [
        {"group": "No Such Group", "permission_set": "NoSuchSet", "accounts": ["999999999999"]},
        {"group": GROUP, "permission_set": "AdministratorAccess", "organizational_units": ["ou-zzzz-zzzzzzzz"]},
    ]
    config = write_config(tmp_path, emulator, bad)
    assert main(["--config", str(config), "config", "check"]) == EXIT_CONFIG
    out = capsys.readouterr().out
    assert "access.0.group: no group 'No Such Group' in scope" in out
    assert "access.0.permission_set: no permission set 'NoSuchSet'" in out
    assert "access.0.accounts.0: no account 999999999999 in the organization" in out
    assert "access.1.organizational_units.0: no organizational unit or root ou-zzzz-zzzzzzzz" in out
    good = [{"group": GROUP, "permission_set": "AdministratorAccess", "organizational_units": [aws_world["ou"]]}]
    config = write_config(tmp_path, emulator, good)
    assert main(["--config", str(config), "config", "check"]) == EXIT_OK


def test_plan_sync_and_list_what_idsync_manages(
    emulator: GraphEmulator,
    tmp_path: Path,
    aws_world: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("IDSYNC_CLIENT_SECRET", CLIENT_SECRET)
    entry = {"group": GROUP, "permission_set": "AdministratorAccess", "organizational_units": [aws_world["ou"]]}
    config = write_config(tmp_path, emulator, [entry])
    code, plan = run_json(capsys, "--config", str(config), "plan", "--json")
    assert code == EXIT_OK
    assert plan["accountAssignments"]["operations"] == [
        {
            "action": "create",
            "group": GROUP,
            "groupId": plan["accountAssignments"]["operations"][0]["groupId"],
            "permissionSet": "AdministratorAccess",
            "permissionSetArn": plan["accountAssignments"]["operations"][0]["permissionSetArn"],
            "account": aws_world["account"],
        }
    ]
    code, report = run_json(capsys, "--config", str(config), "sync", "--json")
    assert code == EXIT_OK
    assert report["counts"]["assignment"] == {"create": 1}
    code, managed = run_json(capsys, "--config", str(config), "access", "--json")
    assert [(m["group"], m["permissionSet"], m["account"], m["how"]) for m in managed] == [
        (GROUP, "AdministratorAccess", aws_world["account"], "created")
    ]
    held = aws_world["sso"].list_account_assignments_for_principal(
        InstanceArn=aws_world["instance"], PrincipalId=managed[0]["principalId"], PrincipalType="GROUP"
    )["AccountAssignments"]
    assert [a["AccountId"] for a in held] == [aws_world["account"]]
    code, explained = run_json(capsys, "--config", str(config), "plan", "--explain", GROUP, "--json")
    assert code == EXIT_OK
    assert explained["accountAssignments"]["operations"] == []
    code, again = run_json(capsys, "--config", str(config), "sync", "--json")
    assert again["writes"] == 0


def test_sync_prints_the_assignments_it_made(
    emulator: GraphEmulator,
    tmp_path: Path,
    aws_world: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("IDSYNC_CLIENT_SECRET", CLIENT_SECRET)
    entry = {"group": GROUP, "permission_set": "AdministratorAccess", "accounts": [aws_world["account"]]}
    config = write_config(tmp_path, emulator, [entry])
    assert main(["--config", str(config), "plan"]) == EXIT_OK
    planned = capsys.readouterr().out
    assert "Account assignments: 1 write(s)" in planned
    assert GROUP in planned
    assert main(["--config", str(config), "sync"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "assignments" in out
    assert "1 assignment create" in out
    assert main(["--config", str(config), "access"]) == EXIT_OK
    listed = capsys.readouterr().out
    assert aws_world["account"] in listed
    assert "created" in listed
