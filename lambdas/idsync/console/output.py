"""Consoles and plain-text formatting shared by every `idsync` subcommand.

User and configuration text goes through ``escape`` (or ``markup=False``) everywhere: Rich reads
``[...]`` as markup, and ``[IsSoftDeleted]`` must print as written.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape

from idsync.model import Operation, Plan

PIPE_WIDTH = 10_000  # wide enough that no line of a table or a sentence wraps when piped


def make_console(stderr: bool = False, file: TextIO | None = None) -> Console:
    """A console for a terminal (colour, the terminal's width) or, when piped, plain text that never wraps."""
    stream = file or (sys.stderr if stderr else sys.stdout)
    if stream.isatty():
        return Console(file=stream, highlight=False)
    return Console(
        file=stream,
        highlight=False,
        color_system=None,
        no_color=True,
        force_terminal=False,
        width=PIPE_WIDTH,
        soft_wrap=True,
        emoji=False,
    )


def value_text(value: Any) -> str:
    """A value as an admin reads it: text bare, absent as (none), structures as compact JSON."""
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, sort_keys=True, default=str, separators=(", ", ": "))


def change_text(attribute: str, old: Any, new: Any) -> str:
    """``attribute: old -> new``."""
    return f"{attribute}: {value_text(old)} -> {value_text(new)}"


def changes_text(changes: Iterable[tuple[str, Any, Any]]) -> str:
    return "; ".join(change_text(a, o, n) for a, o, n in changes)


def operation_line(op: Operation) -> str:
    """One plan operation as a line: action, kind, name and what changes or why (markup escaped)."""
    detail = changes_text((c.attribute, c.old, c.new) for c in op.changes) if op.changes else op.reason
    line = f"  {op.action.value:>6} {op.kind.value:<10} {op.name}" + (f"  ({detail})" if detail else "")
    return escape(line)


def plan_lines(plan: Plan, show_all: bool, limit: int = 20) -> list[str]:
    """Every operation by name (adoptions included), then every deletion the guard held back, after the
    thresholds it crossed (and the groups it found emptied).

    Without ``show_all`` only the first ``limit`` operations are listed, followed by a count of the rest;
    held-back deletions are always listed in full: they are what an administrator must review before
    ``sync --allow-deletions``.
    """
    lines: list[str] = []
    shown = plan.operations if show_all else plan.operations[:limit]
    lines.extend(operation_line(op) for op in shown)
    rest = len(plan.operations) - len(shown)
    if rest:
        lines.append(f"  ... and {rest} more (use --all)")
    if plan.held_back:
        lines.append(f"held back by the deletion guard ({len(plan.held_back)}, not applied):")
        if plan.guard is not None:
            lines.append(escape(f"  why: {'; '.join(plan.guard.reasons())}"))
        lines.extend(operation_line(op) for op in plan.held_back)
    return lines


def counts_sentence(counts: Mapping[str, Mapping[str, int]]) -> str:
    """``3 user create, 1 membership delete``, or ``no change``."""
    parts = [f"{n} {kind} {action}" for kind, actions in counts.items() for action, n in actions.items() if n]
    return ", ".join(parts) or "no change"
