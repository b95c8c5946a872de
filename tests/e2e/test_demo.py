"""`make demo` as a reader sees it when piped: what each sync changed, and why users were refused or out of scope."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


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
