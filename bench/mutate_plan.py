"""A mutation check of the planner: plant one defect at a time in plan.py, run the tests, count survivors.

``python -m bench.mutate_plan [WORD ...]`` applies each mutant below (or those whose name holds one of
the words; an exact text replacement that must match once), runs the unit tests with ``-x`` against
it (the planner's own tests first), and restores the file whatever happens. A mutant the
tests pass on has survived: the suite cannot tell that defect from the real code. Prints one line per
mutant and a JSON summary; exits 1 when any survives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "lambdas" / "idsync" / "plan.py"
TESTS = ["tests/unit"]
# the planner's own tests run first: most mutants die there in seconds instead of a whole suite's time
FIRST = ["tests/unit/test_plan_laws.py", "tests/unit/test_plan_safety.py", "tests/unit/test_cycle_safety.py"]

# (name, text in plan.py, its replacement)
MUTANTS: list[tuple[str, str, str]] = [
    ("guard count compared with >=", "count > policy.max_deletions", "count >= policy.max_deletions"),
    (
        "guard percent compared with >=",
        "count / total > policy.max_deletion_percent",
        "count / total >= policy.max_deletion_percent",
    ),
    (
        "guard ignores membership removals",
        "if removals_trip(len(counted), managed_memberships):",
        "if False:",
    ),
    (
        "membership removals share the users' threshold",
        "if removals_trip(len(counted), managed_memberships):",
        "if trips(len(counted), managed_memberships):",
    ),
    (
        "membership floor compared with <",
        "if count <= policy.membership_removal_floor:",
        "if count < policy.membership_removal_floor:",
    ),
    ("membership floor ignored", "if count <= policy.membership_removal_floor:", "if count == 0:"),
    (
        "membership percent compared with >=",
        "count / total > policy.max_membership_removal_percent",
        "count / total >= policy.max_membership_removal_percent",
    ),
    (
        "memberships of deleted users counted as removals",
        "if op.source_id not in deleted_groups and op.member_source_id not in deleted_users",
        "if op.source_id not in deleted_groups",
    ),
    (
        "memberships of deleted groups counted as removals",
        "if op.source_id not in deleted_groups and op.member_source_id not in deleted_users",
        "if op.member_source_id not in deleted_users",
    ),
    ("emptied group ignored", "    if emptied:\n", "    if False:\n"),
    ("emptied group needs one more than its minimum", "if count >= minimum and sid", "if count > minimum and sid"),
    ("group keeping a member in Entra counted as emptied", "return candidates - listed", "return candidates"),
    ("emptied-group minimum of 0 not off", "    if minimum <= 0:\n        return set()\n", ""),
    (
        "memberships of unmanaged users planned for removal",
        "user_sid = user_by_target.get(user_target)",
        "user_sid = user_by_target.get(user_target, user_target)",
    ),
    (
        "userName matched case-sensitively",
        "free_by_name.setdefault(target.user_name.casefold(), target)",
        "free_by_name.setdefault(target.user_name, target)",
    ),
    (
        "held-back deletions leave out groups",
        "held_back = membership_removes + group_deletes + user_deletes",
        "held_back = membership_removes + user_deletes",
    ),
    (
        "guard override ignored",
        "    if policy.allow_deletions:\n        return None\n",
        "",
    ),
    ("newcomer takes a user's name", "sorted(self.desired.users, key=self._claim_order)", "sorted(self.desired.users)"),
    ("newcomer takes a group's name", "sorted(desired.groups, key=claim_order)", "sorted(desired.groups)"),
    (
        "creates before the renames that free their names",
        "return renames + create_ops, adopts",
        "return create_ops + renames, adopts",
    ),
    (
        "renames never go through a temporary name",
        "holder.get(fold(new), t) == t or holder[fold(new)] not in pending",
        "True",
    ),
    (
        "restorable users deleted",
        "or sid in refused or sid in self.desired.retained:",
        "or sid in refused:",
    ),
    (
        "restorable groups deleted",
        "if sid in desired.groups or sid in refused or sid in desired.retained:",
        "if sid in desired.groups or sid in refused:",
    ),
    (
        "memberships of refused objects removed",
        "        if group_sid in refused or user_sid in refused:\n            continue\n",
        "",
    ),
    ("groups deleted although delete_groups is off", "    if policy.delete_groups:\n", "    if True:\n"),
    (
        "deprovision keep deletes users",
        "        if self.policy.deprovision is DeprovisionMode.KEEP:\n            return []\n",
        "",
    ),
    (
        "out-of-scope deletions not skipped",
        "if user is None and self.policy.skip_out_of_scope_deletions and sid in self.desired.out_of_scope:",
        "if False:",
    ),
]


def run_tests() -> bool:
    """True when the tests pass (the planner's own first, then every unit test)."""
    environment = dict(os.environ, PYTHONPATH=f"{ROOT / 'lambdas'}{os.pathsep}{ROOT}")
    for tests in (FIRST, TESTS):
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
        if subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, check=False).returncode != 0:
            return False
    return True


def main() -> int:
    original = PLAN.read_text(encoding="utf-8")
    survivors: list[str] = []
    words = sys.argv[1:]
    chosen = [m for m in MUTANTS if not words or any(w in m[0] for w in words)]
    try:
        for name, old, new in chosen:
            if original.count(old) != 1:
                raise SystemExit(f"mutant {name!r}: its text occurs {original.count(old)} times in plan.py, not once")
            PLAN.write_text(original.replace(old, new), encoding="utf-8")
            survived = run_tests()
            print(f"{'SURVIVED' if survived else 'killed  '}  {name}", flush=True)
            if survived:
                survivors.append(name)
    finally:
        PLAN.write_text(original, encoding="utf-8")
    print(json.dumps({"mutants": len(chosen), "survivors": survivors}))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
