"""The `idsync` command: the same engine as the Lambda functions, run from a laptop or a CI job.

Exit codes: 0 success; 1 some objects failed; 2 configuration error; 3 the deletion guard held
deletions back; 4 Entra or AWS could not be reached or refused the credentials.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from idsync.config import Settings, load_settings
from idsync.errors import ConfigError, DirectoryAuthError, DirectoryError, TargetAuthError, TargetError
from idsync.model import CycleReport, Operation, Plan, Refusal

EXIT_OK, EXIT_FAILURES, EXIT_CONFIG, EXIT_GUARD, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
DEFAULT_CONFIG = "idsync.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="idsync",
        description="Provision Microsoft Entra ID users and groups into AWS IAM Identity Center.",
    )
    parser.add_argument(
        "--config",
        default=os.environ.get("IDSYNC_CONFIG", DEFAULT_CONFIG),
        help="configuration file (default: $IDSYNC_CONFIG or ./idsync.yaml)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    plan = sub.add_parser("plan", help="show what a sync would change, without changing anything")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.add_argument("--all", action="store_true", help="list every operation (default: the first 20)")
    plan.add_argument("--explain", metavar="ID", help="why one user or group (id, UPN or name) gets what it gets")

    config = sub.add_parser("config", help="check the configuration and show the effective mapping")
    config.add_argument("action", choices=["check"])
    config.add_argument("--json", action="store_true", help="machine-readable output")

    sync = sub.add_parser("sync", help="run one provisioning cycle now")
    sync.add_argument("--json", action="store_true", help="machine-readable output")
    sync.add_argument("--dry-run", action="store_true", help="plan only (same as `idsync plan`)")
    sync.add_argument(
        "--allow-deletions", action="store_true", help="apply deletions even above the deletion guard, once"
    )

    sync.add_argument("--full", action="store_true", help="force a full reconcile (re-read both sides)")

    check = sub.add_parser("test-connection", help="check Graph and Identity Store credentials and permissions")
    check.add_argument("--json", action="store_true", help="machine-readable output")

    status = sub.add_parser("status", help="the current and last cycles, quarantine and escrow")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    logs = sub.add_parser("logs", help="provisioning logs, newest first")
    logs.add_argument("--cycle", help="only this cycle id")
    logs.add_argument("--status", choices=["success", "failure", "skipped"], help="only this outcome")
    logs.add_argument("--limit", type=int, default=100, help="at most this many entries (default 100)")
    logs.add_argument("--json", action="store_true", help="machine-readable output")

    provision = sub.add_parser("provision", help="provision one user or one group (and its members) now")
    target = provision.add_mutually_exclusive_group(required=True)
    target.add_argument("--user", help="userPrincipalName or object id")
    target.add_argument("--group", help="displayName or object id")
    provision.add_argument("--json", action="store_true", help="machine-readable output")

    subscriptions = sub.add_parser(
        "subscriptions", help="the PIM groups' Graph subscriptions: list them, or create and renew them now"
    )
    subscriptions.add_argument("action", nargs="?", choices=["list", "ensure"], default="list")
    subscriptions.add_argument("--json", action="store_true", help="machine-readable output")

    quarantine = sub.add_parser("quarantine", help="leave quarantine after fixing its cause")
    quarantine.add_argument("action", choices=["clear"])
    return parser


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
    for kind in ("user", "group", "membership"):
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
        table.add_row(f"{refusal.kind} {refusal.name}", refusal.attribute, refusal.rule)
    console.print(table)


def _show_plan(console: Console, plan: Plan, show_all: bool) -> None:
    console.print(_summary_table("Plan", plan.summary()))
    shown = plan.operations if show_all else plan.operations[:20]
    for op in shown:
        if not op.is_write:
            continue
        detail = ", ".join(c.attribute for c in op.changes) if op.action.value == "update" else op.reason
        console.print(f"  {op.action.value:>6} {op.kind.value:<10} {op.name}" + (f"  ({detail})" if detail else ""))
    if len(plan.operations) > len(shown):
        console.print(f"  ... and {len(plan.operations) - len(shown)} more (use --all)")
    _print_refusals(console, plan.refusals)
    if plan.guard is not None:
        console.print(f"[bold red]{plan.guard.message}[/]")
        console.print(f"held back by the deletion guard ({len(plan.held_back)}):")
        for op in plan.held_back:
            console.print(f"  {op.action.value:>6} {op.kind.value:<10} {op.name}  ({op.reason})", highlight=False)


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
        "ok": report.ok,
    }


def _show_report(console: Console, report: CycleReport) -> None:
    console.print(_summary_table(f"Cycle {report.cycle_id}", report.counts))
    console.print(f"writes to IAM Identity Center: {report.writes}")
    if report.failures:
        table = Table(title=f"Failed: {len(report.failures)} operation(s) (retried next cycle)")
        for column in ("object", "action", "error"):
            table.add_column(column, overflow="fold")
        for entry in report.failures:
            table.add_row(f"{entry.kind} {entry.name}", entry.action, entry.error or "")
        console.print(table)
    _print_refusals(console, report.refusals)
    if report.guard is not None:
        console.print(f"[bold red]{report.guard.message}[/]")


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
            console.print(f"[red]{error}[/]")
            return EXIT_FAILURES
        if args.json:
            print(json.dumps(explained, indent=2, default=str))
        else:
            for key, value in explained.items():
                console.print(f"[bold]{key}[/]: {json.dumps(value, indent=2, default=str)}", highlight=False)
        return EXIT_OK
    outcome = engine.cycle.run(CycleOptions(dry_run=True))
    assert outcome.plan is not None
    plan = outcome.plan
    if args.json:
        payload = {
            "mode": outcome.mode,
            "summary": plan.summary(),
            "writes": plan.writes,
            "operations": [_operation_json(op) for op in plan.operations],
            "refusals": [_refusal_json(r) for r in plan.refusals],
            "deletionGuard": plan.guard.message if plan.guard else None,
            "heldBack": [_operation_json(op) for op in plan.held_back],
        }
        print(json.dumps(payload, indent=2, default=str))
    else:
        console.print(f"read mode: {outcome.mode}")
        _show_plan(console, plan, args.all)
    return EXIT_GUARD if plan.guard is not None else EXIT_OK


def cmd_sync(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from idsync.services.cycle import CycleOptions
    from idsync.wiring import build_engine

    engine = build_engine(settings, local=True)
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
        _show_report(console, report)
    return _exit_code(report)


def cmd_test_connection(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from idsync.wiring import build_engine

    engine = build_engine(settings, local=True)
    checks = list(engine.source.check()) + list(engine.target.check())  # type: ignore[attr-defined]
    ok = all(c.ok for c in checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [c.__dict__ for c in checks]}, indent=2))
    else:
        for c in checks:
            mark = "[green]ok[/]  " if c.ok else "[red]FAIL[/]"
            console.print(f"{mark} {c.name}: {c.detail}")
        console.print("connection test passed" if ok else "[bold red]connection test failed[/]")
    return EXIT_OK if ok else EXIT_UNREACHABLE


def cmd_status(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from idsync.services.cycle import RUN_CURRENT, RUN_LAST
    from idsync.services.escrow import ESCROW_KEY, load_quarantine
    from idsync.wiring import build_state

    state = build_state(settings)
    current = state.get_item(RUN_CURRENT)
    last = state.get_item(RUN_LAST)
    quarantine = load_quarantine(state)
    escrow = (state.get_item(ESCROW_KEY) or {}).get("entries", {})
    payload: dict[str, Any] = {
        "running": current,
        "last": last,
        "quarantine": None
        if quarantine is None
        else {
            "since": quarantine.since.isoformat(),
            "reason": quarantine.reason,
            "lastAttempt": quarantine.last_attempt.isoformat(),
            "howToLeave": quarantine.how_to_leave,
        },
        "escrow": len(escrow),
    }
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
        return EXIT_OK
    if quarantine is not None:
        console.print(f"[bold red]in quarantine[/] since {quarantine.since.isoformat()}: {quarantine.reason}")
        console.print(f"  to leave it: {quarantine.how_to_leave}")
    if current:
        total = current.get("total") or 0
        done = current.get("processed") or 0
        width = 30
        filled = int(width * done / total) if total else 0
        console.print(
            f"running: cycle {current['cycleId']} ({current['mode']}) "
            f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
        )
    if last:
        console.print(
            f"last cycle: {last['cycleId']} ({last.get('mode')}) {last['status']}, finished {last.get('finished')}"
        )
        console.print(_summary_table("changes", last.get("counts") or {}))
        console.print(
            f"failures: {last.get('failures', 0)}  refused: {last.get('refusals', 0)}  "
            f"writes: {last.get('writes', 0)}  in escrow: {len(escrow)}"
        )
        if last.get("deletionGuard"):
            console.print(f"[bold red]{last['deletionGuard']}[/]")
    if not current and not last:
        console.print("no cycle has run yet")
    return EXIT_OK


def cmd_logs(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from idsync.wiring import build_state

    rows = build_state(settings).query_logs(cycle_id=args.cycle, status=args.status, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    console.print(f"provisioning log: {len(rows)} entries, newest first")
    for row in rows:
        changes = ", ".join(
            f"{m['attribute']}: {m['oldValue']!r} -> {m['newValue']!r}" for m in row.get("modifiedProperties", [])
        )
        colour = {"success": "green", "failure": "red"}.get(row["status"], "yellow")
        console.print(
            f"{row['activityDateTime'][:19]}  {row['cycleId']}  [{colour}]{row['status']:<7}[/]  "
            f"{row['action']:<6} {row['kind']} {row['name']}",
            highlight=False,
        )
        detail = row.get("error") or changes
        if detail:
            console.print(f"    {detail}", highlight=False, markup=False)
    return EXIT_OK


def cmd_provision(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from idsync.wiring import build_engine

    engine = build_engine(settings, local=True)
    kind, key = ("user", args.user) if args.user else ("group", args.group)
    try:
        outcome = engine.cycle.provision(kind, key)
    except LookupError as error:
        console.print(f"[red]{error}[/]")
        return EXIT_FAILURES
    if outcome.report is None:
        console.print(f"[yellow]nothing provisioned:[/] {outcome.skipped}")
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
        return EXIT_OK
    console.print(f"configuration {args.config}: valid")
    for kind, table_rows in rows.items():
        table = Table(title=f"effective {kind[:-1]} mapping")
        for column in ("target attribute", "source", "apply"):
            table.add_column(column, overflow="fold")
        for row in table_rows:
            table.add_row(*row)
        console.print(table)
    scope = settings.scope
    console.print(
        f"scope: {scope.mode}; nested groups {'flattened' if scope.flatten_nested_groups else 'not flattened'}; "
        f"{len(scope.user_filters)} user filter(s), {len(scope.group_filters)} group filter(s)"
    )
    return EXIT_OK


def cmd_quarantine(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from idsync.services.escrow import clear_quarantine
    from idsync.wiring import build_state

    was = clear_quarantine(build_state(settings))
    console.print("left quarantine: the next cycle runs on schedule" if was else "idsync was not in quarantine")
    return EXIT_OK


def cmd_subscriptions(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from idsync.wiring import build_subscriptions_service

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
                console.print(f"{label}: {', '.join(groups) or '-'}")
            for group, error in report.failed.items():
                console.print(f"[red]failed[/] {group}: {error}", highlight=False)
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
            row.group_id,
            sub.id if sub else "[red]none[/]",
            sub.expiration.isoformat() if sub else "-",
            "yes" if row.renew_due else "no",
        )
    console.print(table)
    return EXIT_OK


COMMANDS = {
    "plan": cmd_plan,
    "sync": cmd_sync,
    "test-connection": cmd_test_connection,
    "status": cmd_status,
    "logs": cmd_logs,
    "quarantine": cmd_quarantine,
    "provision": cmd_provision,
    "config": cmd_config,
    "subscriptions": cmd_subscriptions,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(stderr=bool(getattr(args, "json", False)))
    errors = Console(stderr=True)
    try:
        settings = load_settings(args.config)
        return COMMANDS[args.command](settings, args, console)
    except ConfigError as error:
        errors.print(f"[red]configuration error:[/] {error}", markup=True, highlight=False)
        return EXIT_CONFIG
    except (DirectoryAuthError, TargetAuthError) as error:
        errors.print(f"[red]credentials or permissions rejected:[/] {error}", highlight=False)
        return EXIT_UNREACHABLE
    except (DirectoryError, TargetError) as error:
        errors.print(f"[red]cannot reach a side:[/] {error}", highlight=False)
        return EXIT_UNREACHABLE


if __name__ == "__main__":
    sys.exit(main())
