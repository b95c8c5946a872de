"""The Entra mirror stored in shards by id hash, plus a journal of recent changes, so that a cycle stores
in proportion to what it changed.

Layout: a manifest item under the key lists, per shard, its generation, chunk count and SHA-256; each
shard's chunks are items ``{key}@{generation}#{index}`` (zlib-compressed JSON, base64, as idsync's blobs).
The last shard holds the app's assignments and Entra's deleted items; the others hold the users, and
the groups with their members, whose ids hash to them. The shard count is the manifest's (its length
less one), so a mirror stored with another count loads; a full save writes ``SHARDS``.

A delta cycle's changes go to the journal: one more piece (same format as a shard) holding the changed
objects as they are now (null: gone), listed in the manifest's ``journal`` in order; a load applies the
pieces over the shards. Once the journal would hold more than ``JOURNAL_SHARE`` of the mirror's objects
(or ``JOURNAL_PIECES`` pieces), the save compacts: it rewrites the shards every journalled or changed id
falls in and drops the journal. So a save costs in proportion to the cycle's changes, plus, now and then,
a compaction in proportion to the changes since the last one.

Crash safety: a changed shard or journal piece is written under a new generation, the manifest naming it
is written last, and only then are the replaced generations deleted, so a crash mid-save leaves the
previous mirror whole. No chunk is ever left without a manifest naming it (as in ``blobs``): before a
save writes chunks, the manifest lists the generations being written (``pending_shards``); the new
manifest lists the generations it replaced (``replaced_shards``) until the next save, which deletes both
kinds of leftovers first; a damaged mirror is forgotten into a manifest that keeps only those lists, for
the rebuilt mirror's save. A manifest written by ``save_blob`` (one blob: the format before shards) still
loads; the next save writes shards and deletes the single blob's chunks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
import zlib
from typing import Any

from idsync.errors import StateError
from idsync.mirror import SCHEMA_VERSION, Mirror
from idsync.ports import StateStore
from idsync.services.blobs import CHUNK_CHARS, load_blob
from idsync.services.blobs import _generations as blob_generations

SHARDS = 256  # object shards a full save writes (a stored mirror keeps the count it was saved with)
META = SHARDS  # with SHARDS shards: the index of the assignments and deleted items
JOURNAL_SHARE = 0.05  # the journal holds at most this share of the mirror's objects before a compaction
JOURNAL_MIN = 200  # ... or this many, whichever is more (a small mirror still journals a few changes)
JOURNAL_PIECES = 24  # and at most this many pieces (each one more read when the mirror loads)


def shard_of(object_id: str, shards: int = SHARDS) -> int:
    """The shard an object id is stored in, of ``shards`` (stable across processes and versions)."""
    return zlib.crc32(object_id.encode("utf-8")) % shards


def load_mirror(state: StateStore, key: str) -> Mirror | None:
    """The stored mirror, or None when absent, damaged or from another schema (a full read follows)."""
    manifest = state.get_item(key)
    if not manifest:
        return None
    if "shards" not in manifest:
        blob = load_blob(state, key)
        return Mirror.from_bytes(blob) if blob else None
    if manifest.get("v") != SCHEMA_VERSION:
        return None
    mirror = Mirror()
    meta = len(manifest["shards"]) - 1
    for index, entry in enumerate([*manifest["shards"], *(manifest.get("journal") or ())]):
        payload = _read_shard(state, key, entry)
        if payload is None:
            # forget it, keeping its generations named so the rebuilt mirror's save deletes their chunks
            state.put_item(key, {"replaced_shards": [list(g) for g in _all_generations(manifest)]})
            return None
        if index == meta:
            mirror.assigned_users = set(payload["assigned_users"])
            mirror.assigned_groups = set(payload["assigned_groups"])
            mirror.soft_deleted = dict(payload["soft_deleted"])
        elif index < meta:
            mirror.users.update(payload["users"])
            mirror.groups.update(payload["groups"])
            mirror.members.update(payload["members"])
        else:
            _replay(mirror, payload)
    mirror.changed = set()
    return mirror


def _replay(mirror: Mirror, piece: dict[str, Any]) -> None:
    """Apply one journal piece: each object as it was when journalled (None: gone)."""
    for object_id, user, group, members in piece["objects"]:
        for table, value in ((mirror.users, user), (mirror.groups, group), (mirror.members, members)):
            if value is None:
                table.pop(object_id, None)
            else:
                table[object_id] = value


def save_mirror(state: StateStore, key: str, mirror: Mirror) -> int:
    """Store the mirror; returns how many pieces (shards, journal pieces) were written.

    ``mirror.changed`` (ids changed since it was loaded; None: anything may have) decides what is
    serialised: its objects go to one journal piece while the journal stays small, else the shards they
    (and the journalled ids) fall in are rewritten and the journal dropped; with None (or no stored
    shards) every shard is written. An unchanged shard is never written. Chunks a crashed save left
    behind are deleted first. Raises StateError."""
    previous = state.get_item(key) or {}
    entries: list[dict[str, Any]] | None = previous.get("shards") if previous.get("v") == SCHEMA_VERSION else None
    journal: list[dict[str, Any]] = list(previous.get("journal") or ()) if entries is not None else []
    leftovers = _leftovers(previous)
    for generation, count in leftovers:
        _delete_chunks(state, key, {"generation": generation, "chunks": count})
    changed = mirror.changed
    replaced: list[dict[str, Any]] = []
    if entries is not None and changed is None and len(entries) != SHARDS + 1:
        # stored with another shard count: a full save lays the mirror out anew
        replaced += [entry for entry in [*entries, *journal] if entry]
        entries, journal = None, []
    shards = len(entries) - 1 if entries is not None else SHARDS
    meta = shards
    new_entries = list(entries) if entries is not None else [{} for _ in range(SHARDS + 1)]
    pending: dict[int, tuple[dict[str, Any], list[str]]] = {}
    if entries is not None and changed is not None and _journals(mirror, journal, changed):
        candidates = {meta}
        if changed:
            objects = [[i, mirror.users.get(i), mirror.groups.get(i), mirror.members.get(i)] for i in sorted(changed)]
            entry, chunks = _piece({"objects": objects})
            pending[len(new_entries) + len(journal)] = (entry | {"objects": len(objects)}, chunks)
    else:
        if entries is None or changed is None:
            candidates = set(range(shards + 1))
        else:
            ids = set(changed) | _journalled(state, key, journal)
            candidates = {shard_of(object_id, shards) for object_id in ids} | {meta}
        # compacted: the journal's pieces are folded into the shards written now
        replaced += journal
        journal = []
    payloads = _payloads(mirror, candidates, shards)
    for index in sorted(candidates):
        entry, chunks = _piece(payloads.pop(index))
        if new_entries[index].get("sha256") != entry["sha256"]:
            pending[index] = (entry, chunks)
    if entries is not None and not pending and not replaced:
        if leftovers:
            state.put_item(key, _manifest(entries, journal))
        mirror.changed = set()
        return 0
    base = {k: v for k, v in previous.items() if k not in ("pending_shards", "replaced_shards")}
    # named before written: a crash among the chunks leaves them findable by the next save or delete
    writing = [[entry["generation"], entry["chunks"]] for entry, _ in pending.values()]
    state.put_item(key, {**base, "pending_shards": writing})
    for index, (entry, chunks) in pending.items():
        for number, chunk in enumerate(chunks):
            state.put_item(f"{key}@{entry['generation']}#{number}", {"data": chunk})
        if index >= len(new_entries):
            journal.append(entry)
            continue
        if new_entries[index]:
            replaced.append(new_entries[index])
        new_entries[index] = entry
    if previous and "shards" not in previous:
        # the single blob this deployment stored before shards, and whatever its saves left behind
        replaced += [{"generation": g, "chunks": n} for g, n in blob_generations(previous)]
    manifest = _manifest(new_entries, journal)
    if replaced:
        manifest["replaced_shards"] = [[entry["generation"], entry["chunks"]] for entry in replaced]
    state.put_item(key, manifest)
    for entry in replaced:
        _delete_chunks(state, key, entry)
    mirror.changed = set()
    return len(pending)


def _journals(mirror: Mirror, journal: list[dict[str, Any]], changed: set[str]) -> bool:
    """Whether this save's changes go to the journal (it stays within its bounds) rather than compacting it."""
    if not changed:
        return True
    held = sum(int(entry.get("objects", 0)) for entry in journal) + len(changed)
    limit = max(JOURNAL_MIN, JOURNAL_SHARE * (len(mirror.users) + len(mirror.groups)))
    return len(journal) < JOURNAL_PIECES and held <= limit


def _journalled(state: StateStore, key: str, journal: list[dict[str, Any]]) -> set[str]:
    """The ids the journal's pieces hold (read again for a compaction; a damaged piece raises StateError)."""
    ids: set[str] = set()
    for entry in journal:
        piece = _read_shard(state, key, entry)
        if piece is None:
            raise StateError(f"mirror {key}: journal piece {entry.get('generation')} is missing or damaged")
        ids.update(str(item[0]) for item in piece["objects"])
    return ids


def _piece(payload: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A shard's or journal piece's manifest entry (new generation) and chunks."""
    blob = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
    text = base64.b64encode(zlib.compress(blob, 6)).decode("ascii")
    chunks = [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)] or [""]
    entry = {"generation": uuid.uuid4().hex[:12], "chunks": len(chunks), "sha256": hashlib.sha256(blob).hexdigest()}
    return entry, chunks


def _manifest(entries: list[dict[str, Any]], journal: list[dict[str, Any]]) -> dict[str, Any]:
    manifest: dict[str, Any] = {"v": SCHEMA_VERSION, "shards": entries}
    if journal:
        manifest["journal"] = journal
    return manifest


def delete_mirror(state: StateStore, key: str) -> None:
    """Delete every chunk the manifest names (its shards' and any a crashed save left), then the manifest."""
    manifest = state.get_item(key)
    if not manifest:
        return
    for generation, count in _all_generations(manifest):
        _delete_chunks(state, key, {"generation": generation, "chunks": count})
    state.delete_item(key)


def _leftovers(manifest: dict[str, Any]) -> list[tuple[str, int]]:
    """Generations a manifest names that its shards do not use: being written by a save that crashed, or
    replaced by the last save (their chunks may remain)."""
    found = [(str(g), int(n)) for key in ("pending_shards", "replaced_shards") for g, n in manifest.get(key) or ()]
    return list(dict.fromkeys(found))


def _all_generations(manifest: dict[str, Any]) -> list[tuple[str, int]]:
    """Every chunk generation a manifest names: its shards', its leftovers, and a single blob's."""
    pieces = [*(manifest.get("shards") or ()), *(manifest.get("journal") or ())]
    shards = [(str(e["generation"]), int(e["chunks"])) for e in pieces if e]
    single = blob_generations(manifest) if "shards" not in manifest else []
    return list(dict.fromkeys(shards + _leftovers(manifest) + single))


def _payloads(mirror: Mirror, wanted: set[int], shards: int) -> dict[int, dict[str, Any]]:
    """The payloads of the ``wanted`` shards, of ``shards`` (its index: the assignments and deleted items)."""
    meta = shards
    out: dict[int, dict[str, Any]] = {i: {"users": {}, "groups": {}, "members": {}} for i in wanted if i != meta}
    if out:
        for name, table in (("users", mirror.users), ("groups", mirror.groups), ("members", mirror.members)):
            for object_id, value in table.items():
                shard = shard_of(object_id, shards)
                if shard in out:
                    out[shard][name][object_id] = value
    if meta in wanted:
        out[meta] = {
            "assigned_users": sorted(mirror.assigned_users),
            "assigned_groups": sorted(mirror.assigned_groups),
            "soft_deleted": mirror.soft_deleted,
        }
    return out


def _read_shard(state: StateStore, key: str, entry: dict[str, Any]) -> dict[str, Any] | None:
    parts = []
    for number in range(int(entry["chunks"])):
        item = state.get_item(f"{key}@{entry['generation']}#{number}")
        if item is None:
            return None
        parts.append(str(item["data"]))
    try:
        blob = zlib.decompress(base64.b64decode("".join(parts)))
    except zlib.error:
        return None
    if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        return None
    payload: dict[str, Any] = json.loads(blob)
    return payload


def _delete_chunks(state: StateStore, key: str, entry: dict[str, Any]) -> None:
    for number in range(int(entry["chunks"])):
        state.delete_item(f"{key}@{entry['generation']}#{number}")
