"""The `idsync` command: the same engine as the Lambda functions, run from a laptop or a CI job.

Exit codes: 0 success; 1 some objects failed; 2 configuration error; 3 the deletion guard held
deletions back; 4 Entra or AWS could not be reached or refused the credentials.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from idsync.config import Settings, load_settings
from idsync.console.output import change_text, counts_sentence, make_console, plan_lines
from idsync.errors import ConfigError, DirectoryAuthError, DirectoryError, TargetAuthError, TargetError
from idsync.model import CycleReport, Operation, Plan, Refusal

EXIT_OK, EXIT_FAILURES, EXIT_CONFIG, EXIT_GUARD, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
DEFAULT_CONFIG = "idsync.yaml"


EXIT_CODES_HELP = """exit codes:
  0  success
  1  some objects failed (they are retried, see escrow), or nothing could be provisioned on demand
  2  configuration error (or a wrong command line)
  3  the deletion guard held deletions back
  4  Entra or AWS could not be reached or rejected the credentials"""


def _positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def _instant(text: str) -> datetime:
    """An argparse type: an ISO 8601 date (2026-11-27) or date-time; without a zone, UTC."""
    from idsync.console.views import parse_time

    value = parse_time(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date or date-time (e.g. 2026-11-27T08:00)")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("idsync")
    except PackageNotFoundError:
        return "unknown (not installed as a package)"


def _sub(
    sub: Any, name: str, summary: str, description: str = "", parents: list[argparse.ArgumentParser] | None = None
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        parents=parents or [],
        help=summary,
        description=description or summary,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="idsync",
        description="Provision Microsoft Entra ID users and groups into AWS IAM Identity Center.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"idsync {_version()}")
    parser.add_argument(
        "--config",
        default=os.environ.get("IDSYNC_CONFIG", DEFAULT_CONFIG),
        help="configuration file (default: $IDSYNC_CONFIG or ./idsync.yaml)",
    )
    parser.add_argument(
        "--json", dest="global_json", action="store_true", help="machine-readable output (also after the command)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plan = _sub(
        sub,
        "plan",
        "show what a sync would change, without changing anything",
        "Show what the next sync would change, without writing: every create, update, delete and adoption\n"
        "by name, and every deletion the deletion guard would hold back.",
    )
    plan.add_argument("--all", action="store_true", help="list every operation (default: the first 20)")
    plan.add_argument("--explain", metavar="ID", help="why one user or group (id, UPN or name) gets what it gets")
    plan.description = (plan.description or "") + (
        "\nWith an access section, also the account assignments to be made and removed."
    )

    config = _sub(
        sub,
        "config",
        "check the configuration and show the effective mapping",
        "Check the configuration and show the effective mapping. With an access section, also read AWS\n"
        "and Entra: every permission set, account and OU must exist, and every group must be in scope.",
    )
    config.add_argument(
        "action", choices=["check"], help="check: validate the file and print the effective attribute mapping"
    )

    sync = _sub(sub, "sync", "run one provisioning cycle now")
    sync.add_argument("--dry-run", action="store_true", help="plan only: say what would be written (as `idsync plan`)")
    sync.add_argument(
        "--allow-deletions",
        action="store_true",
        help="apply deletions even above the deletion guard, once (recorded in the log with who ran it)",
    )
    sync.add_argument("--full", action="store_true", help="force a full reconcile (re-read both sides)")

    _sub(
        sub,
        "test-connection",
        "check Graph and Identity Store credentials and permissions",
        "Entra's Test Connection: a Graph token, then one read per Graph application permission idsync needs\n"
        "(each failure names the missing permission), and the Identity Store reachable.",
    )

    # the commands an operator runs against a deployment's state table
    deployed = argparse.ArgumentParser(add_help=False)
    deployed.add_argument("--table", help="a deployment's state table (stack output TableName) instead of state:")
    deployed.add_argument("--region", help="the table's region (default: state.region, then identity_store.region)")

    _sub(
        sub,
        "status",
        "the current and last cycles, totals, next cycle, pause, PIM grants, quarantine and escrow",
        parents=[deployed],
    )

    logs = _sub(sub, "logs", "provisioning logs, newest first (filter by object, date, action; CSV export)")
    logs.add_argument("--cycle", help="only this cycle id")
    logs.add_argument(
        "--status",
        choices=["success", "failure", "skipped"],
        help="only this outcome: success (applied), failure (failed, retried), skipped (refused or held back)",
    )
    logs.add_argument(
        "--action",
        choices=[
            "create",
            "update",
            "delete",
            "adopt",
            "skip",
            "quarantine clear",
            "allow deletions",
            "provision",
            "pause",
            "resume",
        ],
        help="only this action (operator actions: quarantine clear, allow deletions, provision, pause, resume)",
    )
    logs.add_argument("--object", dest="obj", metavar="NAME|ID", help="only this object: a UPN, group name or id")
    logs.add_argument("--since", type=_instant, metavar="WHEN", help="only entries at or after (ISO 8601, UTC)")
    logs.add_argument("--until", type=_instant, metavar="WHEN", help="only entries before (ISO 8601, UTC)")
    logs.add_argument("--limit", type=_positive, default=100, help="at most this many entries (default 100)")
    logs.add_argument("--csv", action="store_true", help="CSV (one header line, one row per entry)")

    provision = _sub(sub, "provision", "provision one user or one group (and its members) now")
    target = provision.add_mutually_exclusive_group(required=True)
    target.add_argument("--user", help="userPrincipalName or object id")
    target.add_argument("--group", help="displayName or object id")

    _sub(sub, "grants", "the PIM for Groups grants in force now, with their end times")

    _sub(
        sub,
        "access",
        "the account assignments idsync manages (created or adopted), as recorded",
        parents=[deployed],
    )

    report = _sub(
        sub,
        "report",
        "write a self-contained HTML page of the last cycles, totals, refusals, escrow and grants",
    )
    report.add_argument("--html", metavar="FILE", required=True, help="where to write the page")

    subscriptions = _sub(
        sub, "subscriptions", "the PIM groups' Graph subscriptions: list them, or create and renew them now"
    )
    subscriptions.add_argument(
        "action",
        nargs="?",
        choices=["list", "ensure"],
        default="list",
        help="list: what Graph holds (default); ensure: create the missing ones and renew those due",
    )

    quarantine = _sub(sub, "quarantine", "leave quarantine after fixing its cause", parents=[deployed])
    quarantine.add_argument(
        "action", choices=["clear"], help="clear: leave quarantine now (recorded in the log with who ran it)"
    )

    pause = _sub(
        sub,
        "pause",
        "stop syncing and granting (removals and expiries go on) until resume",
        parents=[deployed],
    )
    pause.add_argument("--reason", default="paused by an operator", help="why (shown by status and in skips)")
    _sub(sub, "resume", "end a pause: the next tick syncs again", parents=[deployed])
    return parser


def _state(settings: Settings, args: argparse.Namespace) -> Any:
    """The state store: ``--table`` (a deployment's DynamoDB table) or the configuration's ``state:``."""
    from idsync.config import StateSettings
    from idsync.wiring import build_state

    if getattr(args, "table", None):
        region = args.region or settings.state.region or settings.identity_store.region
        table = StateSettings(backend="dynamodb", table_name=args.table, region=region)
        settings = settings.model_copy(update={"state": table})
    return build_state(settings)


def _operation_json(op: Operation) -> dict[str, Any]:
    return {
        "kind": op.kind.value,
        "action": op.action.value,
        "name": op.name,
        "sourceId": op.source_id if op.member_source_id is None else f"{op.source_id}:{op.member_source_id}",
        "targetId": op.target_id or op.membership_id,
        "changes": [{"attribute": c.attribute, "old": c.old, "new": c.new} for c in op.changes],
        "reason": op.reason,
    }


def _refusal_json(refusal: Refusal) -> dict[str, Any]:
    return {
        "kind": refusal.kind,
        "sourceId": refusal.source_id,
        "name": refusal.name,
        "attribute": refusal.attribute,
        "rule": refusal.rule,
        "message": refusal.message,
    }


def _summary_table(title: str, counts: dict[str, dict[str, int]] | Any) -> Table:
    table = Table(title=title, show_lines=False)
    table.add_column("object")
    for action in ("create", "update", "delete", "adopt"):
        table.add_column(action, justify="right")
    extra = ("assignment",) if counts.get("assignment") else ()  # account assignments (access as code)
    for kind in ("user", "group", "membership", *extra):
        row = counts.get(kind, {})
        table.add_row(kind + "s", *(str(row.get(a, 0)) for a in ("create", "update", "delete", "adopt")))
    return table


def _print_refusals(console: Console, refusals: Sequence[Refusal]) -> None:
    if not refusals:
        return
    table = Table(title=f"Refused: {len(refusals)} object(s) break an IAM Identity Center rule")
    for column in ("object", "attribute", "rule"):
        table.add_column(column, overflow="fold")
    for refusal in refusals:
        table.add_row(escape(f"{refusal.kind} {refusal.name}"), escape(refusal.attribute), escape(refusal.rule))
    console.print(table)


def _show_plan(console: Console, plan: Plan, show_all: bool) -> None:
    console.print(_summary_table("Plan", plan.summary()))
    for line in plan_lines(plan, show_all):
        console.print(line)
    _print_refusals(console, plan.refusals)
    if plan.guard is not None:
        console.print(f"[bold red]{escape(plan.guard.message)}[/]")


def _report_json(report: CycleReport) -> dict[str, Any]:
    return {
        "cycleId": report.cycle_id,
        "started": report.started,
        "finished": report.finished,
        "dryRun": report.dry_run,
        "complete": report.complete,
        "writes": report.writes,
        "counts": report.counts,
        "failures": [f.as_dict() for f in report.failures],
        "refusals": [_refusal_json(r) for r in report.refusals],
        "deletionGuard": report.guard.message if report.guard else None,
        "deletionGuardDetail": report.guard.as_dict() if report.guard else None,
        "ok": report.ok,
    }


def _show_report(console: Console, report: CycleReport, show_refusals: bool = True) -> None:
    title = f"Dry run {report.cycle_id}: nothing written" if report.dry_run else f"Cycle {report.cycle_id}"
    console.print(_summary_table(title, report.counts))
    if report.dry_run:
        console.print(f"would write to IAM Identity Center: {report.writes}")
    else:
        console.print(f"writes to IAM Identity Center: {report.writes} ({counts_sentence(report.counts)})")
    if report.failures:
        table = Table(title=f"Failed: {len(report.failures)} operation(s) (retried next cycle)")
        for column in ("object", "action", "error"):
            table.add_column(column, overflow="fold")
        for entry in report.failures:
            table.add_row(escape(f"{entry.kind} {entry.name}"), escape(entry.action), escape(entry.error or ""))
        console.print(table)
    if show_refusals:
        _print_refusals(console, report.refusals)
    elif report.refusals:
        console.print(f"refused: {len(report.refusals)} object(s), unchanged since they were reported (idsync status)")
    if report.guard is not None:
        console.print(f"[bold red]{escape(report.guard.message)}[/]")


def _exit_code(report: CycleReport) -> int:
    if report.guard is not None:
        return EXIT_GUARD
    return EXIT_FAILURES if report.failures else EXIT_OK


def cmd_plan(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from idsync.services.cycle import CycleOptions
    from idsync.wiring import build_engine

    engine = build_engine(settings, local=True)
    if args.explain:
        try:
            explained = engine.cycle.explain(args.explain)
        except LookupError as error:
            console.print(f"[red]{escape(str(error))}[/]")
            return EXIT_FAILURES
        access = engine.cycle.plan_access() if explained["kind"] == "group" else None
        if access is not None:
            explained["accountAssignments"] = _access_plan_json(*access, group_id=explained["id"])
        if args.json:
            print(json.dumps(explained, indent=2, default=str))
        else:
            for key, value in explained.items():
                console.print(f"[bold]{key}[/]: {escape(json.dumps(value, indent=2, default=str))}")
        return EXIT_OK
    outcome = engine.cycle.run(CycleOptions(dry_run=True))
    assert outcome.plan is not None
    plan = outcome.plan
    access = engine.cycle.plan_access()
    if args.json:
        payload = {
            "mode": outcome.mode,
            "summary": plan.summary(),
            "writes": plan.writes,
            "operations": [_operation_json(op) for op in plan.operations],
            "refusals": [_refusal_json(r) for r in plan.refusals],
            "deletionGuard": plan.guard.message if plan.guard else None,
            "deletionGuardDetail": plan.guard.as_dict() if plan.guard else None,
            "heldBack": [_operation_json(op) for op in plan.held_back],
        }
        if access is not None:
            payload["accountAssignments"] = _access_plan_json(*access)
        print(json.dumps(payload, indent=2, default=str))
    else:
        console.print(f"read mode: {outcome.mode}")
        _show_plan(console, plan, args.all)
        if access is not None:
            _show_access_plan(console, *access, show_all=args.all)
    guarded = plan.guard is not None or (access is not None and access[0].guard is not None)
    return EXIT_GUARD if guarded else EXIT_OK


def cmd_sync(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from idsync.services.cycle import CycleOptions
    from idsync.wiring import build_engine

    engine = build_engine(settings, local=True)
    if args.allow_deletions and not args.dry_run:
        _audit(settings, engine.state, "allow deletions", "the next cycle's deletions, above the deletion guard")
    options = CycleOptions(
        dry_run=args.dry_run,
        allow_deletions=args.allow_deletions,
        force_full=args.full,
        ignore_quarantine=True,
    )
    if args.json or not console.is_terminal:
        outcome = engine.cycle.run(options)
    else:
        columns = (TextColumn("syncing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("sync", total=None)
            options.progress = lambda done, total: bar.update(task, completed=done, total=total)
            outcome = engine.cycle.run(options)
    if outcome.report is None:
        if args.json:
            print(json.dumps({"skipped": outcome.skipped}))
        else:
            console.print(f"[yellow]no cycle ran:[/] {outcome.skipped}")
        return EXIT_FAILURES
    report = outcome.report
    if args.json:
        payload = _report_json(report)
        payload["mode"] = outcome.mode
        payload["calls"] = {"graph": engine.counters.graph.calls, "aws": engine.counters.aws.calls}
        print(json.dumps(payload, indent=2, default=str))
    else:
        console.print(f"read mode: {outcome.mode}")
        if report.dry_run and outcome.plan is not None:
            _show_plan(console, outcome.plan, show_all=True)
            console.print(f"would write to IAM Identity Center: {report.writes}")
        else:
            _show_report(console, report, show_refusals=_refusals_changed(engine.state, report))
    return _exit_code(report)


def _refusals_changed(state: Any, report: CycleReport) -> bool:
    """True when this cycle logged a new or changed refusal (so the table is worth printing again)."""
    return any(
        row["action"] == "skip" for row in state.query_logs(cycle_id=report.cycle_id, status="skipped", limit=1000)
    )


def cmd_test_connection(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from idsync.wiring import build_engine

    engine = build_engine(settings, local=True)
    source_checks = engine.source.check(settings.pim.groups)  # type: ignore[attr-defined]
    checks = list(source_checks) + list(engine.target.check())  # type: ignore[attr-defined]
    ok = all(c.ok for c in checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [dataclasses.asdict(c) for c in checks]}, indent=2))
    else:
        for c in checks:
            mark = "[green]ok[/]  " if c.ok else "[red]FAIL[/]"
            console.print(f"{mark} {escape(c.name)}: {escape(c.detail)}")
        console.print("connection test passed" if ok else "[bold red]connection test failed[/]")
    return EXIT_OK if ok else EXIT_UNREACHABLE


def _status_payload(settings: Settings, state: Any, config_path: str) -> dict[str, Any]:
    from idsync.console.views import interval_minutes, status_payload

    return status_payload(state, settings.pim.groups, interval_minutes(config_path), datetime.now(UTC))


def cmd_status(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    state = _state(settings, args)
    payload = _status_payload(settings, state, args.config)
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
        return EXIT_OK
    current, last, quarantine = payload["running"], payload["last"], payload["quarantine"]
    paused, not_configured = payload["paused"], payload["notConfigured"]
    if paused is not None:
        console.print(
            f"[bold yellow]paused[/] since {paused['since']} by {escape(str(paused['by']))}: "
            f"{escape(str(paused['reason']))}"
        )
        console.print("  to go on: idsync resume")
    if not_configured is not None:
        since, reason = not_configured["since"], not_configured["reason"]
        console.print(f"[bold yellow]not configured yet[/] (since {since}): {escape(str(reason))}", highlight=False)
    if quarantine is not None:
        console.print(f"[bold red]in quarantine[/] since {quarantine['since']}: {escape(quarantine['reason'])}")
        console.print(f"  to leave it: {escape(quarantine['howToLeave'])}")
    totals = payload["totals"]
    console.print(
        f"managed in IAM Identity Center: {totals['users']} users, {totals['groups']} groups, "
        f"{totals['memberships']} memberships"
    )
    if current:
        total = current.get("total") or 0
        done = current.get("processed") or 0
        width = 30
        filled = int(width * done / total) if total else 0
        console.print(
            escape(
                f"running: cycle {current['cycleId']} ({current['mode']}) "
                f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
            )
        )
    if last:
        console.print(
            escape(
                f"last cycle: {last['cycleId']} ({last.get('mode')}) {last['status']}, finished {last.get('finished')}"
            )
        )
        console.print(_summary_table("changes", last.get("counts") or {}))
        console.print(
            f"failures: {last.get('failures', 0)}  refused: {last.get('refusals', 0)}  "
            f"writes: {last.get('writes', 0)}  in escrow: {payload['escrow']}"
        )
        if last.get("deletionGuard"):
            console.print(f"[bold red]{escape(last['deletionGuard'])}[/]")
    if not current and not last:
        console.print("no cycle has run yet")
    _print_drift(console, payload["drift"])
    due = payload["nextCycle"]
    console.print(
        f"next cycle: due by {due['dueBy']} (every {due['intervalMinutes']:g} minutes)"
        if due
        else "next cycle: no schedule in this configuration (stack.sync_interval_minutes); run `idsync sync`"
    )
    _print_grants(console, payload["grants"])
    return EXIT_OK


def _print_drift(console: Console, drift: dict[str, Any] | None) -> None:
    if drift is None:
        console.print("drift check: no slice read yet (it runs in delta cycles; sync.drift_check_hours)")
        return
    under_way = f"round under way since {drift['roundStarted']}" if drift["roundStarted"] else "a round begins"
    finished = drift["roundsFinished"]
    last = f", the last at {drift['lastRoundFinished']}" if drift["lastRoundFinished"] else ""
    console.print(
        escape(
            f"drift check: {under_way} (next: {drift['phase']}), last slice read {drift['lastSlice']}; "
            f"{finished} round{'' if finished == 1 else 's'} finished{last}"
        ),
        highlight=False,
    )


def _print_grants(console: Console, grants: Sequence[dict[str, Any]]) -> None:
    if not grants:
        console.print("active PIM grants: none")
        return
    table = Table(title=f"active PIM grants: {len(grants)}")
    for column in ("group", "user", "ends", "standing member"):
        table.add_column(column, overflow="fold")
    for grant in grants:
        table.add_row(
            escape(grant["group"]),
            escape(grant["user"]),
            grant["end"] or "never",
            "yes" if grant["standing"] else "no",
        )
    console.print(table)


def cmd_grants(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from idsync.console.views import active_grants
    from idsync.wiring import build_state

    grants = active_grants(build_state(settings), settings.pim.groups, datetime.now(UTC))
    if args.json:
        print(json.dumps(grants, indent=2))
        return EXIT_OK
    if not settings.pim.groups:
        console.print("no PIM groups configured (pim.groups)")
    _print_grants(console, grants)
    return EXIT_OK


def cmd_logs(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from idsync.console.views import OPERATOR_KIND, LogFilter, logs_csv, query_logs
    from idsync.wiring import build_state

    wanted = LogFilter(args.cycle, args.status, args.action, args.obj, args.since, args.until, args.limit)
    rows = query_logs(build_state(settings), wanted)
    if args.csv:
        sys.stdout.write(logs_csv(rows))
        return EXIT_OK
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    console.print(f"provisioning log: {len(rows)} entries, newest first")
    for row in rows:
        colour = {"success": "green", "failure": "red"}.get(row["status"], "yellow")
        if row["kind"] == OPERATOR_KIND:
            what = f"{row['action']} {row['name']} (by {row['sourceIdentity']})"
        else:
            what = f"{row['action']:<6} {row['kind']} {row['name']}"
        console.print(
            f"{escape(row['activityDateTime'][:19])}  {escape(row['cycleId'])}  "
            f"[{colour}]{row['status']:<7}[/]  {escape(what)}"
        )
        changes = [change_text(m["attribute"], m["oldValue"], m["newValue"]) for m in row.get("modifiedProperties", [])]
        for detail in [row["error"]] if row.get("error") else changes:
            console.print(f"    {escape(detail)}")
    return EXIT_OK


def cmd_provision(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from idsync.wiring import build_engine

    engine = build_engine(settings, local=True)
    kind, key = ("user", args.user) if args.user else ("group", args.group)
    _audit(settings, engine.state, "provision", f"{kind} {key}")
    try:
        outcome = engine.cycle.provision(kind, key)
    except LookupError as error:
        if args.json:
            print(json.dumps({"provisioned": False, "reason": str(error)}))
        else:
            console.print(f"[red]{escape(str(error))}[/]")
        return EXIT_FAILURES
    if outcome.report is None:
        if args.json:
            print(json.dumps({"provisioned": False, "reason": outcome.skipped}))
        else:
            console.print(f"[yellow]nothing provisioned:[/] {escape(outcome.skipped or '')}")
        return EXIT_FAILURES
    if args.json:
        print(json.dumps(_report_json(outcome.report), indent=2, default=str))
    else:
        _show_report(console, outcome.report)
    return _exit_code(outcome.report) if not outcome.report.refusals else EXIT_FAILURES


def cmd_config(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from idsync.mapping import build_mappers, describe

    user_mapper, group_mapper = build_mappers(settings.mapping)
    rows = {"users": describe(user_mapper), "groups": describe(group_mapper)}
    if args.json:
        payload = {
            kind: [{"target": t, "source": src, "apply": a} for t, src, a in table] for kind, table in rows.items()
        }
        payload["scope"] = settings.scope.model_dump(mode="json")  # type: ignore[assignment]
        print(json.dumps(payload, indent=2))
        return _check_access(settings, make_console(stderr=True))
    console.print(f"configuration {escape(args.config)}: valid")
    for kind, table_rows in rows.items():
        table = Table(title=f"effective {kind[:-1]} mapping")
        for column in ("target attribute", "source", "apply"):
            table.add_column(column, overflow="fold")
        for row in table_rows:
            table.add_row(*(escape(cell) for cell in row))
        console.print(table)
    scope = settings.scope
    console.print(
        f"scope: {scope.mode}; nested groups {'flattened' if scope.flatten_nested_groups else 'not flattened'}; "
        f"{len(scope.user_filters)} user filter(s), {len(scope.group_filters)} group filter(s)"
    )
    return _check_access(settings, console)


def _check_access(settings: Settings, console: Console) -> int:
    """The access section against AWS and Entra (names exist, groups in scope). Raises TargetError, DirectoryError."""
    if not settings.access:
        return EXIT_OK
    from idsync.wiring import build_engine

    engine = build_engine(settings, local=True)
    assert engine.access is not None
    problems = engine.access.check(engine.cycle.groups_in_scope())
    for problem in problems:
        console.print(f"[red]{escape(problem)}[/]")
    if problems:
        return EXIT_CONFIG
    console.print(
        f"access: {len(settings.access)} entr{'y' if len(settings.access) == 1 else 'ies'} checked against AWS"
    )
    return EXIT_OK


def cmd_quarantine(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from idsync.services.escrow import clear_quarantine

    state = _state(settings, args)
    was = clear_quarantine(state)
    who = _audit(settings, state, "quarantine clear", "quarantine" if was else "quarantine (was not in it)", args)
    if args.json:
        print(json.dumps({"wasInQuarantine": was, "by": who}))
    else:
        console.print("left quarantine: the next cycle runs on schedule" if was else "idsync was not in quarantine")
    return EXIT_OK


def cmd_pause(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from idsync.services.control import pause
    from idsync.services.cycle import RUN_CURRENT

    state = _state(settings, args)
    who = _audit(settings, state, "pause", args.reason, args)
    paused = pause(state, datetime.now(UTC), args.reason, who)
    running = state.get_item(RUN_CURRENT)
    if args.json:
        print(json.dumps({**paused.as_dict(), "runningCycle": running["cycleId"] if running else None}, default=str))
        return EXIT_OK
    console.print(f"paused since {paused.since.isoformat()}: no cycle starts and no access is granted until resume")
    console.print("removals of ended activations and scheduled expiries go on")
    if running:
        console.print(f"a cycle is running ({running['cycleId']}): it finishes; `idsync status` shows when")
    return EXIT_OK


def cmd_resume(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from idsync.services.control import resume

    state = _state(settings, args)
    was = resume(state)
    who = _audit(settings, state, "resume", "pause" if was else "pause (was not paused)", args)
    if args.json:
        print(json.dumps({"wasPaused": was, "by": who}))
        return EXIT_OK
    console.print("resumed: the next tick syncs and held activations apply" if was else "idsync was not paused")
    return EXIT_OK


def _audit(settings: Settings, state: Any, action: str, target: str, args: argparse.Namespace | None = None) -> str:
    """Record an operator action in the provisioning log with who ran it; returns who."""
    from idsync.console.views import operator_identity, record_operator_action

    if args is not None and getattr(args, "table", None):  # a deployment's table named on the command line
        region = args.region or settings.state.region or settings.identity_store.region
        who = operator_identity("dynamodb", region)
    else:
        who = operator_identity(settings.state.backend, settings.state.region, settings.state.endpoint_url)
    record_operator_action(state, who, action, target, datetime.now(UTC))
    return who


def cmd_subscriptions(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from idsync.wiring import build_subscriptions_service

    if args.action == "list" and not (settings.pim.client_state or settings.pim.client_state_arn):
        # listing never reads the clientState: a laptop needs only the groups and the webhook's URL
        pim = settings.pim.model_copy(update={"client_state": "not-read-when-listing"})
        settings = settings.model_copy(update={"pim": pim})
    service = build_subscriptions_service(settings)
    if args.action == "ensure":
        report = service.ensure()
        if args.json:
            print(json.dumps(report.as_dict(), indent=2))
        else:
            for label, groups in (
                ("created", report.created),
                ("recreated", report.recreated),
                ("renewed", report.renewed),
                ("unchanged", report.unchanged),
                ("deleted", report.deleted),
            ):
                console.print(f"{label}: {escape(', '.join(groups) or '-')}")
            for group, error in report.failed.items():
                console.print(f"[red]failed[/] {escape(group)}: {escape(error)}")
        return EXIT_FAILURES if report.failed else EXIT_OK
    rows = service.status()
    if args.json:
        print(json.dumps([row.as_dict() for row in rows], indent=2))
        return EXIT_OK
    table = Table(title=f"Graph subscriptions of the {len(rows)} PIM group(s)")
    for column in ("group", "subscription", "expires", "renewal due"):
        table.add_column(column, overflow="fold")
    for row in rows:
        sub = row.subscription
        table.add_row(
            escape(row.group_id),
            escape(sub.id) if sub else "[red]none[/]",
            sub.expiration.isoformat() if sub else "-",
            "yes" if row.renew_due else "no",
        )
    console.print(table)
    return EXIT_OK


def cmd_report(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from pathlib import Path

    from idsync.console.report import render_report
    from idsync.console.views import LOG_SCAN_LIMIT, cycles_from_logs
    from idsync.wiring import build_state

    state = build_state(settings)
    status = _status_payload(settings, state, args.config)
    rows = state.query_logs(limit=LOG_SCAN_LIMIT)
    last_cycle = (status["last"] or {}).get("cycleId")
    held = [r for r in rows if r["cycleId"] == last_cycle and r["status"] == "skipped" and r["action"] != "skip"]
    page = render_report(status, cycles_from_logs(rows), held, datetime.now(UTC))
    try:
        Path(args.html).write_text(page, encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"--html {args.html}: cannot write the report: {error.strerror}") from None
    if args.json:
        print(json.dumps({"written": args.html, "bytes": len(page.encode())}))
    else:
        console.print(f"report written to {escape(args.html)} ({len(page.encode())} bytes, no external resources)")
    return EXIT_OK


# --------------------------------------------------------------------------- access as code


def _assignment_json(item: Any, names: dict[str, str], action: str) -> dict[str, Any]:
    return {
        "action": action,
        "group": names.get(item.group_source_id, item.group_source_id),
        "groupId": item.group_source_id,
        "permissionSet": names.get(item.permission_set_arn, item.permission_set_arn),
        "permissionSetArn": item.permission_set_arn,
        "account": item.account_id,
    }


def _access_plan_json(plan: Any, names: dict[str, str], group_id: str | None = None) -> dict[str, Any]:
    """The account assignments of a plan (of one group when ``group_id`` is given)."""
    rows = [
        _assignment_json(item, names, action)
        for action, items in (
            ("create", plan.creates),
            ("adopt", plan.adopts),
            ("delete", plan.removes),
            ("held back", plan.held_back),
        )
        for item in items
        if group_id is None or item.group_source_id == group_id
    ]
    return {
        "operations": rows,
        "writes": sum(1 for r in rows if r["action"] in ("create", "delete")),
        "problems": list(plan.problems),
        "deletionGuard": plan.guard.message if plan.guard else None,
    }


def _show_access_plan(console: Console, plan: Any, names: dict[str, str], show_all: bool) -> None:
    data = _access_plan_json(plan, names)
    rows = data["operations"]
    table = Table(title=f"Account assignments: {data['writes']} write(s)")
    for column in ("action", "group", "permission set", "account"):
        table.add_column(column, overflow="fold")
    for row in rows if show_all else rows[:20]:
        table.add_row(*(escape(str(row[k])) for k in ("action", "group", "permissionSet", "account")))
    if rows:
        console.print(table)
        if not show_all and len(rows) > 20:
            console.print(f"... and {len(rows) - 20} more (--all)")
    else:
        console.print("account assignments: nothing to change")
    for problem in data["problems"]:
        console.print(f"[yellow]{escape(problem)}[/]")
    if data["deletionGuard"]:
        console.print(f"[bold red]{escape(data['deletionGuard'])}[/]")


def cmd_access(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from idsync.services.access import managed_assignments

    rows = managed_assignments(_state(settings, args), settings.access)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    table = Table(title=f"Account assignments idsync manages: {len(rows)}")
    for column in ("group", "permission set", "account", "how"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(escape(row[k]) for k in ("group", "permissionSet", "account", "how")))
    console.print(table)
    return EXIT_OK


COMMANDS = {
    "access": cmd_access,
    "plan": cmd_plan,
    "sync": cmd_sync,
    "test-connection": cmd_test_connection,
    "status": cmd_status,
    "logs": cmd_logs,
    "quarantine": cmd_quarantine,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "provision": cmd_provision,
    "config": cmd_config,
    "subscriptions": cmd_subscriptions,
    "grants": cmd_grants,
    "report": cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.json = bool(getattr(args, "json", False) or args.global_json)
    console = make_console(stderr=args.json or bool(getattr(args, "csv", False)))
    errors = make_console(stderr=True)
    try:
        settings = load_settings(args.config)
        return COMMANDS[args.command](settings, args, console)
    except ConfigError as error:
        errors.print(f"[red]configuration error:[/] {escape(str(error))}")
        return EXIT_CONFIG
    except (DirectoryAuthError, TargetAuthError) as error:
        errors.print(f"[red]credentials or permissions rejected:[/] {escape(str(error))}")
        return EXIT_UNREACHABLE
    except (DirectoryError, TargetError) as error:
        errors.print(f"[red]cannot reach a side:[/] {escape(str(error))}")
        return EXIT_UNREACHABLE
    except BrokenPipeError:
        # the reader left (`| head`): stop quietly, and keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
