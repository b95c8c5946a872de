"""What an administrator reads: the `idsync` command's exact text, JSON and exit codes against the local world."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import boto3
import markupsafe
import pytest
import yaml

from idsync.cli import EXIT_CONFIG, EXIT_FAILURES, EXIT_GUARD, EXIT_OK, EXIT_UNREACHABLE, main
from idsync.config import load_settings
from idsync.ports import AccessGrant
from idsync.wiring import build_state
from sandbox.graph_emulator import GraphEmulator
from sandbox.tenant import CLIENT_ID, CLIENT_SECRET, IDSYNC_PERMISSIONS, SERVICE_PRINCIPAL_ID, Tenant
from tests.e2e.conftest import IdentityCenter

SOFT_DELETE_SWITCH = 'Switch([IsSoftDeleted], , "False", [accountEnabled], "True", "False")'


@pytest.fixture
def config(emulator: GraphEmulator, tmp_path: Path, identity_store_id: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IDSYNC_CLIENT_SECRET", CLIENT_SECRET)
    for name in [n for n in os.environ if n.startswith("IDSYNC__")]:
        monkeypatch.delenv(name)
    path = tmp_path / "idsync.yaml"
    write(
        path,
        {
            "graph": emulator.graph_config(),
            "scope": {"mode": "assigned", "service_principal_id": SERVICE_PRINCIPAL_ID},
            "identity_store": {"region": "us-east-1"},
            "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        },
    )
    return path


def write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")


def edit(path: Path, **sections: Any) -> None:
    data = yaml.safe_load(path.read_text())
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    write(path, data)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out, _ = run(capsys, *argv)
    return code, json.loads(out)


def assigned_people(tenant: Tenant) -> list[str]:
    """Enabled, unrefused users assigned through a group, by UPN."""
    groups = [g for g in tenant.assignments[SERVICE_PRINCIPAL_ID] if g in tenant.groups]
    ids = {
        m
        for g in groups
        for m in tenant.members[g]
        if m in tenant.users and tenant.users[m].get("accountEnabled", True) and m not in tenant.expected_refusals
    }
    return sorted(tenant.users[m]["userPrincipalName"] for m in ids)


# ---------------------------------------------------------------------- 1. plan names every operation


def test_plan_names_adoptions_and_the_deletions_the_guard_holds_back(
    config: Path, capsys: pytest.CaptureFixture[str], tenant: Tenant, identity_store_id: str
) -> None:
    upn = assigned_people(tenant)[0]
    user = tenant.find_user(upn)
    boto3.client("identitystore", region_name="us-east-1").create_user(
        IdentityStoreId=identity_store_id,
        UserName=upn,
        DisplayName="Made by hand",
        Name={"GivenName": "Made", "FamilyName": "Hand"},
    )
    code, out, _ = run(capsys, "--config", str(config), "plan", "--all")
    assert code == EXIT_OK
    assert f"   adopt user       {upn}  (" in out
    assert out.count(" create user ") > 20

    assert main(["--config", str(config), "sync", "--json"]) == EXIT_OK
    capsys.readouterr()
    groups = [g for g in tenant.assignments[SERVICE_PRINCIPAL_ID] if g in tenant.groups]
    for group in groups[:3]:
        tenant.unassign(group)
    edit(config, sync={"max_deletions": 1, "max_deletion_percent": 1})
    code, out, _ = run(capsys, "--config", str(config), "plan")
    assert code == EXIT_GUARD
    assert "held back by the deletion guard (" in out
    held = out.split("held back by the deletion guard (")[1]
    count = int(held.split(",")[0])
    assert count > 1
    listed = [line for line in held.splitlines() if line.startswith("  delete ")]
    assert len(listed) == count  # every held-back deletion named, without --all
    assert listed[0].startswith("  delete membership ")
    assert " <- " in listed[0]
    assert "deletion guard: this cycle would delete" in out

    code, dry, _ = run(capsys, "--config", str(config), "sync", "--dry-run")
    assert code == EXIT_GUARD
    assert f"held back by the deletion guard ({count}, not applied):" in dry
    assert "would write to IAM Identity Center: " in dry
    assert "writes to IAM Identity Center" not in dry.replace("would write to IAM Identity Center", "")
    assert user["id"]  # the adopted user was found in the tenant


# ---------------------------------------------------------------------- 2. brackets survive


def test_config_check_and_errors_keep_attribute_references(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--config", str(config), "config", "check")
    assert code == EXIT_OK
    assert SOFT_DELETE_SWITCH in out
    assert 'emails[type eq "work"].value' in out
    assert 'Join(" ", [givenName], [surname])' in out

    edit(config, mapping={"users": [{"target": "title", "expression": "Join(, [givenName], [surnam"}]})
    code, _, err = run(capsys, "--config", str(config), "config", "check")
    assert code == EXIT_CONFIG
    assert "Join(, [givenName], [surnam" in err


def test_the_refused_table_keeps_brackets_and_prints_once_per_change(
    config: Path, capsys: pytest.CaptureFixture[str], tenant: Tenant
) -> None:
    code, out, _ = run(capsys, "--config", str(config), "sync")
    assert code == EXIT_OK
    assert f"Refused: {len(tenant.expected_refusals)} object(s) break an IAM Identity Center rule" in out
    code, again, _ = run(capsys, "--config", str(config), "sync")
    assert code == EXIT_OK
    assert "Refused:" not in again
    assert (
        f"refused: {len(tenant.expected_refusals)} object(s), unchanged since they were reported (idsync status)"
        in again
    )
    assert "writes to IAM Identity Center: 0 (no change)" in again


# ---------------------------------------------------------------------- 3 and 4. test-connection


def test_test_connection_json_lists_every_permission_it_checked(
    config: Path, capsys: pytest.CaptureFixture[str], tenant: Tenant
) -> None:
    pim_group = next(iter(tenant.groups))
    edit(config, pim={"groups": [pim_group]})
    code, payload = run_json(capsys, "--config", str(config), "test-connection", "--json")
    assert code == EXIT_OK
    assert payload["ok"] is True
    names = [c["name"] for c in payload["checks"]]
    assert names[:2] == ["token", "permissions granted"]
    assert f"PIM schedules of group {pim_group} readable" in names
    assert payload["checks"][1]["detail"] == (
        "User.Read.All, GroupMember.Read.All, Application.Read.All, "
        "PrivilegedAssignmentSchedule.Read.AzureADGroup, Group.Read.All"
    )

    tenant.set_permissions(CLIENT_ID, IDSYNC_PERMISSIONS - {"PrivilegedAssignmentSchedule.Read.AzureADGroup"})
    code, payload = run_json(capsys, "--config", str(config), "test-connection", "--json")
    assert code == EXIT_UNREACHABLE
    failed = {c["name"]: c["detail"] for c in payload["checks"] if not c["ok"]}
    assert set(failed) == {"permissions granted", f"PIM schedules of group {pim_group} readable"}
    assert failed["permissions granted"].startswith(
        "missing application permission(s) PrivilegedAssignmentSchedule.Read.AzureADGroup "
    )
    assert (
        "permission PrivilegedAssignmentSchedule.Read.AzureADGroup"
        in failed[f"PIM schedules of group {pim_group} readable"]
    )


# ---------------------------------------------------------------------- 5. errors, not tracebacks


def test_a_missing_ca_bundle_is_a_configuration_error(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit(config, graph={"ca_bundle": "/nonexistent/demo-ca.pem"})
    code, _, err = run(capsys, "--config", str(config), "plan")
    assert code == EXIT_CONFIG
    assert err.startswith("configuration error: graph.ca_bundle: /nonexistent/demo-ca.pem is not a readable file")
    assert "Traceback" not in err


def test_logs_limit_zero_is_a_usage_error(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(config), "logs", "--limit", "0"])
    assert exited.value.code == EXIT_CONFIG
    assert "argument --limit: 0: must be at least 1" in capsys.readouterr().err


def test_a_closed_pipe_ends_quietly(config: Path) -> None:
    main(["--config", str(config), "sync", "--json"])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    # more than a pipe's 64 KiB buffer, so the writer meets the closed pipe
    command = f"{sys.executable} -m idsync.cli --config {config} logs --json --limit 1000 | head -c 2"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, env=env, check=False
    )
    assert result.stdout == "[\n"
    assert "Traceback" not in result.stderr
    assert result.returncode == EXIT_OK


# ---------------------------------------------------------------------- 6. why not provisioned


def test_provision_and_explain_say_why_not(
    config: Path, capsys: pytest.CaptureFixture[str], tenant: Tenant, identity_center: IdentityCenter
) -> None:
    groups = [g for g in tenant.assignments[SERVICE_PRINCIPAL_ID] if g in tenant.groups]
    in_scope = {m for g in groups for m in tenant.members[g]} | set(tenant.assignments[SERVICE_PRINCIPAL_ID])
    outsider = next(u for u in sorted(tenant.users) if u not in in_scope)
    upn = tenant.users[outsider]["userPrincipalName"]
    code, out, _ = run(capsys, "--config", str(config), "provision", "--user", upn)
    assert code == EXIT_FAILURES
    assert out == (
        f"nothing provisioned: user {upn} is not in scope: not assigned to the application (scope.mode "
        "assigned: neither assigned to the app nor a member of an assigned group)\n"
    )

    disabled = next(
        u
        for u in sorted(in_scope)
        if u in tenant.users and not tenant.users[u].get("accountEnabled", True) and u not in tenant.expected_refusals
    )
    upn = tenant.users[disabled]["userPrincipalName"]
    code, payload = run_json(capsys, "--config", str(config), "provision", "--user", upn, "--json")
    assert code == EXIT_FAILURES
    assert payload == {
        "provisioned": False,
        "reason": f"user {upn} is disabled or soft-deleted in Entra (accountEnabled false) and not in IAM "
        "Identity Center: there is nothing to provision",
    }
    assert upn not in identity_center.users()

    code, out, _ = run(capsys, "--config", str(config), "plan", "--explain", "someone@contoso.example")
    assert code == EXIT_FAILURES
    assert out == (
        "no user or group 'someone@contoso.example' in Entra (users by object id or userPrincipalName, groups by "
        "object id or displayName)\n"
    )


# ---------------------------------------------------------------------- 8. subscriptions from a laptop


def test_subscriptions_list_needs_only_the_groups_and_the_webhook_url(
    config: Path, capsys: pytest.CaptureFixture[str], tenant: Tenant
) -> None:
    pim_group = next(iter(tenant.groups))
    edit(config, pim={"groups": [pim_group], "notification_url": "https://example.com/graph/notifications"})
    code, rows = run_json(capsys, "--config", str(config), "subscriptions", "list", "--json")
    assert code == EXIT_OK
    assert rows == [{"groupId": pim_group, "subscriptionId": None, "expiration": None, "renewDue": True}]


# ---------------------------------------------------------------------- 9. logs, status, grants, audit


def test_logs_filter_by_object_action_and_date_and_export_csv(
    config: Path, capsys: pytest.CaptureFixture[str], tenant: Tenant
) -> None:
    main(["--config", str(config), "sync", "--json"])
    capsys.readouterr()
    upn = assigned_people(tenant)[1]
    code, rows = run_json(capsys, "--config", str(config), "logs", "--object", upn.upper(), "--json")
    assert code == EXIT_OK
    assert {r["kind"] for r in rows} == {"user", "membership"}
    assert all(upn == r["name"] or r["name"].endswith(f" <- {upn}") for r in rows)
    user_row = next(r for r in rows if r["kind"] == "user")
    code, by_id = run_json(capsys, "--config", str(config), "logs", "--object", user_row["sourceIdentity"], "--json")
    assert [r["changeId"] for r in by_id if r["kind"] == "user"] == [user_row["changeId"]]
    code, creates = run_json(capsys, "--config", str(config), "logs", "--action", "create", "--limit", "5", "--json")
    assert len(creates) == 5
    assert {r["action"] for r in creates} == {"create"}
    code, none = run_json(capsys, "--config", str(config), "logs", "--until", "2000-01-01", "--json")
    assert none == []
    code, out, _ = run(capsys, "--config", str(config), "logs", "--object", upn, "--csv")
    table = list(csv.DictReader(io.StringIO(out)))
    assert len(table) == len(rows)
    assert table[0].keys() >= {"activityDateTime", "cycleId", "action", "status", "name", "modifiedProperties"}


def test_logs_since_rejects_a_non_date(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(config), "logs", "--since", "yesterday"])
    assert exited.value.code == EXIT_CONFIG
    assert "'yesterday' is not an ISO 8601 date or date-time" in capsys.readouterr().err


def test_logs_show_changes_as_attribute_old_to_new(
    config: Path, capsys: pytest.CaptureFixture[str], tenant: Tenant
) -> None:
    main(["--config", str(config), "sync", "--json"])
    upn = assigned_people(tenant)[2]
    user = tenant.find_user(upn)
    old_title = user.get("jobTitle")
    tenant.update_user(user["id"], jobTitle="Staff Engineer")
    capsys.readouterr()
    shown = old_title if old_title else "(none)"
    code, planned, _ = run(capsys, "--config", str(config), "plan")
    assert code == EXIT_OK
    assert f"  update user       {upn}  (Title: {shown} -> Staff Engineer)\n" in planned
    main(["--config", str(config), "sync", "--json"])
    capsys.readouterr()
    code, out, _ = run(capsys, "--config", str(config), "logs", "--action", "update", "--object", upn)
    assert code == EXIT_OK
    assert f"    Title: {shown} -> Staff Engineer" in out


def test_status_grants_and_the_audit_of_operator_actions(
    config: Path, capsys: pytest.CaptureFixture[str], tenant: Tenant
) -> None:
    pim_group = next(g for g in tenant.groups if g in tenant.assignments[SERVICE_PRINCIPAL_ID])
    data = yaml.safe_load(config.read_text())
    data["pim"] = {"groups": [pim_group]}
    data["stack"] = {"sync_interval_minutes": 10}
    write(config, data)
    main(["--config", str(config), "sync", "--json"])
    capsys.readouterr()
    settings = load_settings(config)
    state = build_state(settings)
    owned = state.load_ownership()
    member = sorted(owned.users)[0]  # a local sync leaves PIM memberships to the JIT path: any managed user
    from datetime import UTC, datetime, timedelta

    end = (datetime.now(UTC) + timedelta(minutes=45)).replace(microsecond=0)
    state.record_grant(  # type: ignore[attr-defined]
        AccessGrant(pim_group, member, ("instance-1",), end, False, datetime.now(UTC).isoformat())
    )
    state.record_grant(  # type: ignore[attr-defined]
        AccessGrant(pim_group, "ended-user", ("instance-0",), end - timedelta(hours=2), False, "2026-01-01T00:00:00")
    )
    code, status = run_json(capsys, "--config", str(config), "status", "--json")
    assert code == EXIT_OK
    assert status["totals"] == {
        "users": len(owned.users),
        "groups": len(owned.groups),
        "memberships": len(owned.memberships),
    }
    assert status["nextCycle"]["intervalMinutes"] == 10
    started = datetime.fromisoformat(status["last"]["started"])
    assert datetime.fromisoformat(status["nextCycle"]["dueBy"]) == started + timedelta(minutes=10)
    user_name = owned.users[member].user_name
    group_name = owned.groups[pim_group].display_name
    assert [(g["group"], g["user"], g["end"]) for g in status["grants"]] == [(group_name, user_name, end.isoformat())]
    code, grants = run_json(capsys, "--json", "--config", str(config), "grants")
    assert grants == status["grants"]
    code, out, _ = run(capsys, "--config", str(config), "grants")
    assert code == EXIT_OK
    assert "active PIM grants: 1" in out
    assert group_name in out
    assert user_name in out
    assert end.isoformat() in out

    code, cleared = run_json(capsys, "--config", str(config), "quarantine", "clear", "--json")
    assert code == EXIT_OK
    assert cleared["wasInQuarantine"] is False
    assert cleared["by"].startswith("local user ")
    code, audit = run_json(capsys, "--config", str(config), "logs", "--action", "quarantine clear", "--json")
    assert [(r["kind"], r["sourceIdentity"], r["name"]) for r in audit] == [
        ("operator", cleared["by"], "quarantine (was not in it)")
    ]
    code, paused = run_json(capsys, "--config", str(config), "pause", "--reason", "tenant migration", "--json")
    assert code == EXIT_OK
    assert paused["by"] == cleared["by"]
    code, resumed = run_json(capsys, "--config", str(config), "resume", "--json")
    assert (code, resumed) == (EXIT_OK, {"wasPaused": True, "by": cleared["by"]})
    code, audit = run_json(capsys, "--config", str(config), "logs", "--action", "pause", "--json")
    assert [(r["sourceIdentity"], r["name"]) for r in audit] == [(cleared["by"], "tenant migration")]
    upn = assigned_people(tenant)[0]
    main(["--config", str(config), "provision", "--user", upn, "--json"])
    main(["--config", str(config), "sync", "--allow-deletions", "--json"])
    capsys.readouterr()
    code, out, _ = run(capsys, "--config", str(config), "logs", "--status", "success", "--limit", "3")
    assert f"allow deletions the next cycle's deletions, above the deletion guard (by {cleared['by']})" in out
    assert f"provision user {upn} (by {cleared['by']})" in out


# ---------------------------------------------------------------------- 10. the smaller things


def test_json_before_or_after_the_command_version_and_help(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, before = run_json(capsys, "--json", "--config", str(config), "config", "check")
    code_after, after = run_json(capsys, "--config", str(config), "config", "check", "--json")
    assert code == code_after == EXIT_OK
    assert before == after
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("idsync ")
    with pytest.raises(SystemExit):
        main(["logs", "--help"])
    text = capsys.readouterr().out
    assert "exit codes:\n  0  success\n" in text
    assert "  3  the deletion guard held deletions back\n" in text
    assert "skipped (refused or held back)" in text


def test_quarantine_json_and_an_environment_override_named(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDSYNC__SYNC__MAX_DELETIONS", "-5")
    code, _, err = run(capsys, "--config", str(config), "status")
    assert code == EXIT_CONFIG
    assert (
        "  sync.max_deletions: Input should be greater than or equal to 0 "
        "(set by environment variable IDSYNC__SYNC__MAX_DELETIONS)" in err
    )
    monkeypatch.delenv("IDSYNC__SYNC__MAX_DELETIONS")
    edit(config, sync={"max_deletion": 3})
    code, _, err = run(capsys, "--config", str(config), "status")
    assert code == EXIT_CONFIG
    assert "  sync.max_deletion: Extra inputs are not permitted; did you mean 'max_deletions'?" in err


def test_a_wrong_graph_host_is_named(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit(config, graph={"base_url": "http://127.0.0.1:9/v1.0", "max_retries": 0})
    code, _, err = run(capsys, "--config", str(config), "plan")
    assert code == EXIT_UNREACHABLE
    assert "Microsoft Graph at http://127.0.0.1:9 (graph.base_url) is unreachable" in err or (
        "is graph.base_url a Microsoft Graph host?" in err
    )


def test_piped_output_does_not_wrap_or_carry_escape_codes(config: Path, emulator: GraphEmulator) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), COLUMNS="80")
    command = [sys.executable, "-m", "idsync.cli", "--config", str(config), "config", "check"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == EXIT_OK
    assert "\x1b[" not in result.stdout
    line = next(line for line in result.stdout.splitlines() if "IsSoftDeleted" in line)
    assert SOFT_DELETE_SWITCH in line
    assert len(line) > 80


# ---------------------------------------------------------------------- beyond the blade: the HTML report


class Page(HTMLParser):
    """The report's sections (by id), its totals (data-total) and its chart bars."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.totals: dict[str, str] = {}
        self.bars: list[dict[str, str]] = []
        self.external: list[str] = []
        self._total: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "section":
            self.sections.append(values["id"])
        if "data-total" in values:
            self._total = values["data-total"]
        if tag == "rect" and values.get("class") == "bar":
            self.bars.append(values)
        for key in ("src", "href"):
            if key in values:
                self.external.append(values[key])

    def handle_data(self, data: str) -> None:
        if self._total is not None and data.strip():
            self.totals[self._total] = data.strip()
            self._total = None


def test_report_html_is_self_contained_and_agrees_with_status(
    config: Path, capsys: pytest.CaptureFixture[str], tenant: Tenant, tmp_path: Path
) -> None:
    main(["--config", str(config), "sync", "--json"])
    upn = assigned_people(tenant)[0]
    tenant.update_user(tenant.find_user(upn)["id"], jobTitle="<script>alert(1)</script>")
    main(["--config", str(config), "sync", "--json"])
    capsys.readouterr()
    page_path = tmp_path / "report.html"
    code, out, _ = run(capsys, "--config", str(config), "report", "--html", str(page_path))
    assert code == EXIT_OK
    assert out.startswith(f"report written to {page_path} (")
    html = page_path.read_text(encoding="utf-8")
    page = Page()
    page.feed(html)
    assert page.sections == ["cycles", "totals", "refusals", "escrow", "held-back", "grants", "quarantine"]
    assert page.external == []
    assert "<script" not in html
    code, status = run_json(capsys, "--config", str(config), "status", "--json")
    assert page.totals == {
        "users": str(status["totals"]["users"]),
        "groups": str(status["totals"]["groups"]),
        "memberships": str(status["totals"]["memberships"]),
        "refused": str(status["refused"]),
        "escrow": str(status["escrow"]),
        "grants": str(len(status["grants"])),
    }
    code, creates = run_json(
        capsys,
        "--config",
        str(config),
        "logs",
        "--action",
        "create",
        "--status",
        "success",
        "--limit",
        "9999",
        "--json",
    )
    assert sum(int(b["data-value"]) for b in page.bars if b["data-series"] == "create") == len(creates)
    assert {b["data-series"] for b in page.bars} == {"create"}  # the second cycle only refused the new title
    assert len(status["refusals"]) == len(tenant.expected_refusals) + 1  # IAM Identity Center refuses "<" in a title
    assert any("<script>" in message for message in status["refusals"])
    for message in status["refusals"]:
        assert str(markupsafe.escape(message)) in html
