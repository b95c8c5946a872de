"""StateStore on a local SQLite file, for the CLI and the local demo.

One connection, guarded by a lock, serves every thread of the process. The file is in WAL mode
with ``synchronous=NORMAL``: each write is one statement in autocommit mode, committed (safe from
a crash of the process) when the call returns, without an fsync per call. Leases are taken inside
``BEGIN IMMEDIATE``, so two processes on the same file cannot both win.

Tables: ``owned_users``, ``owned_groups``, ``owned_memberships`` (ownership), ``items`` (named JSON
documents), ``logs`` (provisioning log, keyed ``<UTC time>#<change id>`` so text order is time
order; entries older than the retention are hidden, and deleted whenever logs are appended),
``leases`` and ``grants`` (active JIT grants, one JSON document per group and user). ``PRAGMA
user_version`` holds the schema version. A delta cycle reads ownership by key: memberships are indexed
by user too, users by their IAM Identity Center id (the drift check's), and by their casefolded userName,
kept in the plain column ``user_name_folded`` (``str.casefold`` of ``user_name``, written with every user
record) under an ordinary index, so any SQLite client (the ``sqlite3`` shell included) can read, write and
check the file. A row written without the folded name (by hand) is folded when idsync next opens the file.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import sys
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from idsync.adapters.state_codec import encode_json as _encode
from idsync.adapters.state_codec import epoch as _epoch
from idsync.adapters.state_codec import log_time_key as _log_time_key
from idsync.adapters.state_codec import time_key as _time_key
from idsync.errors import LeaseLost, StateError
from idsync.model import LogEntry, OwnedGroup, OwnedMembership, OwnedUser, Ownership
from idsync.ports import AccessGrant, GroupRecords, OwnershipWrite

# 2: the by-key indexes and owned_users.user_name_folded, which older versions do not write, so they refuse the file
SCHEMA_VERSION = 2
_IN_LIMIT = 500  # keys bound in one IN (...) list
_INSERT_USER = (
    "INSERT OR REPLACE INTO owned_users"
    " (source_id, target_id, user_name, doc, manager_source_id, fingerprint, user_name_folded)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_USERS = "SELECT source_id, target_id, user_name, doc, manager_source_id, fingerprint FROM owned_users"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS owned_users (
    source_id TEXT PRIMARY KEY,
    target_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    doc TEXT NOT NULL,
    manager_source_id TEXT,
    fingerprint TEXT NOT NULL,
    user_name_folded TEXT
);
CREATE TABLE IF NOT EXISTS owned_groups (
    source_id TEXT PRIMARY KEY,
    target_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    description TEXT,
    fingerprint TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS owned_memberships (
    group_source_id TEXT NOT NULL,
    user_source_id TEXT NOT NULL,
    membership_id TEXT NOT NULL,
    PRIMARY KEY (group_source_id, user_source_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS owned_memberships_by_user ON owned_memberships (user_source_id);
CREATE INDEX IF NOT EXISTS owned_users_by_target ON owned_users (target_id);
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS logs (
    cycle_id TEXT NOT NULL,
    sort_key TEXT NOT NULL,
    status TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (cycle_id, sort_key)
);
CREATE INDEX IF NOT EXISTS logs_by_time ON logs (sort_key);
CREATE INDEX IF NOT EXISTS logs_by_status ON logs (status, sort_key);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS grants (
    group_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
"""


class SqliteStateStore:
    """``ports.StateStore`` on a SQLite file; safe across threads, leases safe across processes."""

    def __init__(self, path: str | Path, log_retention_days: int = 30) -> None:
        """Open (or create, with its parent folders) the state file.

        Raises StateError when the file cannot be opened or was written by a newer schema.
        """
        self._path = Path(path)
        self._retention = timedelta(days=log_retention_days)
        self._lock = threading.Lock()
        self._fence: tuple[str, str] | None = None  # (lease, owner): see ``fenced``
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: autocommit, so every statement outside BEGIN commits on return
            self._conn = sqlite3.connect(self._path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            with self._transaction("BEGIN IMMEDIATE") as conn:
                self._migrate(conn)
        except (OSError, sqlite3.Error) as error:
            raise StateError(f"state file {self._path}: cannot open: {error}") from error

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Inside the opening write transaction: bring the file to ``SCHEMA_VERSION`` (all or none).

        A version-1 file gets ``user_name_folded``, filled from ``user_name``, and the by-key indexes.
        Raises StateError for a file of a newer schema.
        """
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StateError(
                f"state file {self._path}: schema version {version} is newer than this idsync "
                f"understands ({SCHEMA_VERSION}); upgrade idsync"
            )
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(owned_users)")}
        if "user_name_folded" not in columns:
            conn.execute("ALTER TABLE owned_users ADD COLUMN user_name_folded TEXT")
        # an older file is folded whole; after that only rows written without the folded name (by hand)
        stale = "" if version < SCHEMA_VERSION else " WHERE user_name_folded IS NULL"
        rows = conn.execute(f"SELECT source_id, user_name FROM owned_users{stale}").fetchall()
        conn.executemany(
            "UPDATE owned_users SET user_name_folded = ? WHERE source_id = ?",
            [(user_name.casefold(), source_id) for source_id, user_name in rows],
        )
        conn.execute("CREATE INDEX IF NOT EXISTS owned_users_by_name ON owned_users (user_name_folded)")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ------------------------------------------------------------------ ownership

    def load_ownership(self) -> Ownership:
        """Everything recorded as owned, read as one consistent snapshot. Raises StateError."""
        with self._transaction("BEGIN") as conn:
            users = {
                sys.intern(row[0]): OwnedUser(sys.intern(row[0]), row[1], row[2], json.loads(row[3]), row[4], row[5])
                for row in conn.execute(
                    "SELECT source_id, target_id, user_name, doc, manager_source_id, fingerprint FROM owned_users"
                )
            }
            groups = {
                sys.intern(row[0]): OwnedGroup(sys.intern(row[0]), *row[1:])
                for row in conn.execute(
                    "SELECT source_id, target_id, display_name, description, fingerprint FROM owned_groups"
                )
            }
            # ids interned: hundreds of thousands of memberships share the strings of their users and groups
            memberships = {}
            for group_id, user_id, membership_id in conn.execute(
                "SELECT group_source_id, user_source_id, membership_id FROM owned_memberships"
            ):
                pair = (sys.intern(group_id), sys.intern(user_id))
                memberships[pair] = OwnedMembership(pair[0], pair[1], membership_id)
        return Ownership(users=users, groups=groups, memberships=memberships)

    def load_ownership_of(self, users: Collection[str], groups: Collection[str]) -> Ownership:
        """The records of ``users``, every owned group, the memberships of ``users`` or of ``groups``: one
        snapshot, read through the primary keys and the by-user index. Raises StateError."""
        found: dict[str, OwnedUser] = {}
        memberships: dict[tuple[str, str], OwnedMembership] = {}
        with self._transaction("BEGIN") as conn:
            for chunk in _chunks(users):
                for row in conn.execute(f"{_SELECT_USERS} WHERE source_id IN ({_marks(chunk)})", chunk):
                    found[row[0]] = _owned_user_row(row)
            every = {
                row[0]: OwnedGroup(*row)
                for row in conn.execute(
                    "SELECT source_id, target_id, display_name, description, fingerprint FROM owned_groups"
                )
            }
            for column, keys in (("user_source_id", users), ("group_source_id", groups)):
                for chunk in _chunks(keys):
                    for group_id, user_id, membership_id in conn.execute(
                        "SELECT group_source_id, user_source_id, membership_id FROM owned_memberships "
                        f"WHERE {column} IN ({_marks(chunk)})",
                        chunk,
                    ):
                        memberships[(group_id, user_id)] = OwnedMembership(group_id, user_id, membership_id)
        return Ownership(users=found, groups=every, memberships=memberships)

    def owned_users_named(self, names: Collection[str]) -> dict[str, list[str]]:
        """Holders of the userNames, through the index on ``user_name_folded``. Raises StateError."""
        holders: dict[str, list[str]] = {}
        with self._connection() as conn:
            for chunk in _chunks({name.casefold() for name in names}):
                for source_id, user_name in conn.execute(
                    f"SELECT source_id, user_name FROM owned_users WHERE user_name_folded IN ({_marks(chunk)})",
                    chunk,
                ):
                    holders.setdefault(user_name.casefold(), []).append(source_id)
        return holders

    def owned_users_by_target(self, target_ids: Collection[str]) -> dict[str, OwnedUser]:
        """Through the users' target-id index. Raises StateError."""
        return {owned.target_id: owned for owned in self._users_where("target_id", target_ids)}

    def owned_users(self, source_ids: Collection[str]) -> dict[str, OwnedUser]:
        """By primary key. Raises StateError."""
        return {owned.source_id: owned for owned in self._users_where("source_id", source_ids)}

    def _users_where(self, column: str, values: Collection[str]) -> list[OwnedUser]:
        """The owned users whose ``column`` (an indexed one) is among ``values``, in IN lists."""
        found: list[OwnedUser] = []
        with self._connection() as conn:
            for chunk in _chunks(set(values)):
                rows = conn.execute(f"{_SELECT_USERS} WHERE {column} IN ({_marks(chunk)})", chunk)
                found.extend(_owned_user_row(row) for row in rows)
        return found

    def owned_user_targets(self) -> dict[str, str]:
        """Two columns of every owned user (no document decoded). Raises StateError."""
        with self._connection() as conn:
            rows: list[tuple[str, str]] = conn.execute("SELECT target_id, source_id FROM owned_users").fetchall()
        return dict(rows)

    def count_users_and_groups(self) -> tuple[int, int]:
        """Counted by SQLite. Raises StateError."""
        with self._transaction("BEGIN") as conn:
            (users,) = conn.execute("SELECT COUNT(*) FROM owned_users").fetchone()
            (groups,) = conn.execute("SELECT COUNT(*) FROM owned_groups").fetchone()
        return int(users), int(groups)

    def count_ownership(self, excluded_groups: Collection[str] = ()) -> tuple[int, int, int]:
        """Counted by SQLite (no record is decoded; group ids are GUIDs, so SQLite's ASCII ``lower`` is exact).
        Raises StateError."""
        aside = sorted({group_id.lower() for group_id in excluded_groups})
        with self._transaction("BEGIN") as conn:
            (users,) = conn.execute("SELECT COUNT(*) FROM owned_users").fetchone()
            (groups,) = conn.execute("SELECT COUNT(*) FROM owned_groups").fetchone()
            (memberships,) = conn.execute("SELECT COUNT(*) FROM owned_memberships").fetchone()
            for chunk in _chunks(aside):
                (excluded,) = conn.execute(
                    f"SELECT COUNT(*) FROM owned_memberships WHERE lower(group_source_id) IN ({_marks(chunk)})", chunk
                ).fetchone()
                memberships -= excluded
        return users, groups, memberships

    def record_user(self, owned: OwnedUser) -> None:
        """Record (or replace) an owned user. Raises ValueError for a doc that is not JSON, StateError."""
        self._execute(*_ownership_statement(owned))

    def forget_user(self, source_id: str) -> None:
        self._execute("DELETE FROM owned_users WHERE source_id = ?", (source_id,))

    def record_group(self, owned: OwnedGroup) -> None:
        self._execute(
            "INSERT OR REPLACE INTO owned_groups VALUES (?, ?, ?, ?, ?)",
            (owned.source_id, owned.target_id, owned.display_name, owned.description, owned.fingerprint),
        )

    def forget_group(self, source_id: str) -> None:
        self._execute("DELETE FROM owned_groups WHERE source_id = ?", (source_id,))

    def record_membership(self, owned: OwnedMembership) -> None:
        self._execute(
            "INSERT OR REPLACE INTO owned_memberships VALUES (?, ?, ?)",
            (owned.group_source_id, owned.user_source_id, owned.membership_id),
        )

    def forget_membership(self, group_source_id: str, user_source_id: str) -> None:
        self._execute(
            "DELETE FROM owned_memberships WHERE group_source_id = ? AND user_source_id = ?",
            (group_source_id, user_source_id),
        )

    def write_ownership(self, writes: Sequence[OwnershipWrite]) -> None:
        """Apply the records and forgets in order, in one transaction (all or none).

        Raises ValueError for a doc that is not JSON, StateError.
        """
        # consecutive writes of one statement go in one executemany; the order of the writes is kept
        runs: list[tuple[str, list[tuple[Any, ...]]]] = []
        for write in writes:
            sql, params = _ownership_statement(write)
            if runs and runs[-1][0] == sql:
                runs[-1][1].append(params)
            else:
                runs.append((sql, [params]))
        if not runs:
            return
        with self._transaction("BEGIN IMMEDIATE") as conn:
            self._check_fence(conn)
            for sql, rows in runs:
                conn.executemany(sql, rows)

    # ------------------------------------------------------------------ named documents

    def get_item(self, key: str) -> dict[str, Any] | None:
        with self._connection() as conn:
            row = conn.execute("SELECT value FROM items WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put_item(self, key: str, value: Mapping[str, Any]) -> None:
        """Store a JSON document under key. Raises ValueError when value is not JSON, StateError."""
        self._execute(
            "INSERT OR REPLACE INTO items VALUES (?, ?)",
            (key, _encode(value, f"item {key}: attribute value")),
        )

    def delete_item(self, key: str) -> None:
        self._execute("DELETE FROM items WHERE key = ?", (key,))

    # ------------------------------------------------------------------ provisioning log

    def append_logs(self, entries: Sequence[LogEntry]) -> None:
        """Store entries in one transaction and drop expired ones.

        Raises ValueError for an entry whose time is not ISO 8601, StateError.
        """
        rows = [
            (entry.cycle_id, _log_sort_key(entry), entry.status.value, _encode(entry.as_dict(), "log entry"))
            for entry in entries
        ]
        if not rows:
            return
        with self._transaction("BEGIN IMMEDIATE") as conn:
            conn.executemany("INSERT OR REPLACE INTO logs VALUES (?, ?, ?, ?)", rows)
            conn.execute("DELETE FROM logs WHERE sort_key < ?", (self._cutoff_key(),))

    def query_logs(
        self, cycle_id: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Unexpired entries, newest first, as ``LogEntry.as_dict()`` documents.

        Raises ValueError for a limit below 1, StateError.
        """
        if limit < 1:
            raise ValueError(f"query_logs: limit {limit}: must be at least 1")
        clauses = ["sort_key >= ?"]
        params: list[Any] = [self._cutoff_key()]
        if cycle_id is not None:
            clauses.append("cycle_id = ?")
            params.append(cycle_id)
        if status is not None:
            clauses.append("status = ?")
            params.append(str(status))
        params.append(limit)
        sql = f"SELECT doc FROM logs WHERE {' AND '.join(clauses)} ORDER BY sort_key DESC LIMIT ?"
        with self._connection() as conn:
            return [json.loads(row[0]) for row in conn.execute(sql, params)]

    # ------------------------------------------------------------------ leases

    def acquire_lease(self, name: str, owner: str, now: datetime, ttl_seconds: int) -> bool:
        """Take, take over (expired) or renew (same owner) the lease. False when another owner holds it."""
        at = _epoch(now)
        with self._transaction("BEGIN IMMEDIATE") as conn:
            row = conn.execute("SELECT owner, expires FROM leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] != owner and row[1] >= at:
                return False
            conn.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (name, owner, at + ttl_seconds))
        return True

    def renew_lease(self, name: str, owner: str, now: datetime, ttl_seconds: int) -> bool:
        """Extend the lease while this owner still holds it (expired or not). False once another took it."""
        with self._transaction("BEGIN IMMEDIATE") as conn:
            updated = conn.execute(
                "UPDATE leases SET expires = ? WHERE name = ? AND owner = ?", (_epoch(now) + ttl_seconds, name, owner)
            )
            return updated.rowcount == 1

    def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up; a lease held by another owner is left alone."""
        self._execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    # ------------------------------------------------------------------ JIT (ports.GrantStore)

    def owned_user(self, source_id: str) -> OwnedUser | None:
        with self._connection() as conn:
            row = conn.execute(f"{_SELECT_USERS} WHERE source_id = ?", (source_id,)).fetchone()
        return _owned_user_row(row) if row else None

    def owned_group(self, source_id: str) -> OwnedGroup | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT source_id, target_id, display_name, description, fingerprint FROM owned_groups "
                "WHERE source_id = ?",
                (source_id,),
            ).fetchone()
        return OwnedGroup(*row) if row else None

    def owned_for(self, group_id: str, user_ids: Sequence[str]) -> tuple[OwnedGroup | None, dict[str, OwnedUser]]:
        users = {source_id: owned for source_id in user_ids if (owned := self.owned_user(source_id)) is not None}
        return self.owned_group(group_id), users

    def read_group(self, group_id: str, user_ids: Sequence[str]) -> GroupRecords:
        group, users = self.owned_for(group_id, user_ids)
        return GroupRecords(self.grants(group_id), self.owned_memberships(group_id), group, users)

    def owned_memberships(self, group_source_id: str) -> dict[str, OwnedMembership]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT group_source_id, user_source_id, membership_id FROM owned_memberships "
                "WHERE group_source_id = ?",
                (group_source_id,),
            ).fetchall()
        return {row[1]: OwnedMembership(*row) for row in rows}

    def grants(self, group_id: str) -> dict[str, AccessGrant]:
        """The group's grants by user id. Raises StateError, ValueError for a malformed stored grant."""
        with self._connection() as conn:
            rows = conn.execute("SELECT user_id, doc FROM grants WHERE group_id = ?", (group_id,)).fetchall()
        return {row[0]: AccessGrant.from_document(json.loads(row[1])) for row in rows}

    def grant(self, group_id: str, user_id: str) -> AccessGrant | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT doc FROM grants WHERE group_id = ? AND user_id = ?", (group_id, user_id)
            ).fetchone()
        return AccessGrant.from_document(json.loads(row[0])) if row else None

    def record_grant(self, grant: AccessGrant) -> None:
        doc = _encode(grant.to_document(), f"grant {grant.group_id}/{grant.user_id}")
        self._execute("INSERT OR REPLACE INTO grants VALUES (?, ?, ?)", (grant.group_id, grant.user_id, doc))

    def forget_grant(self, group_id: str, user_id: str) -> None:
        self._execute("DELETE FROM grants WHERE group_id = ? AND user_id = ?", (group_id, user_id))

    # ------------------------------------------------------------------ plumbing

    def _cutoff_key(self) -> str:
        return _time_key(datetime.now(UTC) - self._retention)

    def append_logs_and_release(self, entries: Sequence[LogEntry], name: str, owner: str) -> None:
        """The entries, then the release (a lease another owner holds is left alone). Raises ValueError, StateError."""
        self.append_logs(entries)
        self.release_lease(name, owner)

    def fenced(self, lease: str, owner: str) -> SqliteStateStore:
        """This store seen by the holder of ``lease``: every write runs in one transaction with a check that
        ``owner`` still holds the lease, so a writer that lost it writes nothing (LeaseLost); the same file."""
        view = copy.copy(self)
        view._fence = (lease, owner)
        return view

    def _execute(self, sql: str, params: Sequence[Any]) -> None:
        if self._fence is None:
            with self._connection() as conn:
                conn.execute(sql, params)
            return
        with self._transaction("BEGIN IMMEDIATE") as conn:
            self._check_fence(conn)
            conn.execute(sql, params)

    def _check_fence(self, conn: sqlite3.Connection) -> None:
        """Inside a write transaction: raises LeaseLost unless this view's owner holds its lease."""
        if self._fence is None:
            return
        lease, owner = self._fence
        row = conn.execute("SELECT owner FROM leases WHERE name = ?", (lease,)).fetchone()
        if row is None or row[0] != owner:
            raise LeaseLost(f"lease {lease} was taken over by another writer: write not applied")

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as error:
                raise StateError(f"state file {self._path}: {error}") from error

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        with self._connection() as conn:
            conn.execute(begin)
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")


def _chunks(keys: Collection[str]) -> Iterator[tuple[str, ...]]:
    """The keys in runs SQLite takes as bound parameters of one statement."""
    ordered = tuple(keys)
    for start in range(0, len(ordered), _IN_LIMIT):
        yield ordered[start : start + _IN_LIMIT]


def _marks(chunk: Sequence[str]) -> str:
    return ",".join("?" * len(chunk))


def _owned_user_row(row: Sequence[Any]) -> OwnedUser:
    return OwnedUser(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5])


def _ownership_statement(write: OwnershipWrite) -> tuple[str, tuple[Any, ...]]:
    if isinstance(write, OwnedUser):
        doc = _encode(write.doc, f"user {write.user_name} [{write.source_id}]: attribute doc")
        folded = write.user_name.casefold()
        user = (write.source_id, write.target_id, write.user_name, doc, write.manager_source_id, write.fingerprint)
        return _INSERT_USER, (*user, folded)
    if isinstance(write, OwnedGroup):
        group = (write.source_id, write.target_id, write.display_name, write.description, write.fingerprint)
        return "INSERT OR REPLACE INTO owned_groups VALUES (?, ?, ?, ?, ?)", group
    if isinstance(write, OwnedMembership):
        pair = (write.group_source_id, write.user_source_id, write.membership_id)
        return "INSERT OR REPLACE INTO owned_memberships VALUES (?, ?, ?)", pair
    if write.kind == "user":
        return "DELETE FROM owned_users WHERE source_id = ?", write.key
    if write.kind == "group":
        return "DELETE FROM owned_groups WHERE source_id = ?", write.key
    return "DELETE FROM owned_memberships WHERE group_source_id = ? AND user_source_id = ?", write.key


def _log_sort_key(entry: LogEntry) -> str:
    return f"{_log_time_key(entry)}#{entry.change_id}"
