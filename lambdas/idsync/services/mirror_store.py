"""The Entra mirror stored in shards by id hash, so a cycle rewrites only the shards its changes fell in.

Layout: a manifest item under the key lists, per shard, its generation, chunk count and SHA-256; each
shard's chunks are items ``{key}@{generation}#{index}`` (zlib-compressed JSON, base64, as idsync's blobs).
Shard ``SHARDS`` holds the app's assignments and Entra's deleted items; the others hold the users, and
the groups with their members, whose ids hash to them.

Crash safety: a changed shard is written under a new generation, the manifest naming it is written last,
and only then are the replaced generations deleted, so a crash mid-save leaves the previous mirror whole.
No chunk is ever left without a manifest naming it (as in ``blobs``): before a save writes chunks, the
manifest lists the generations being written (``pending_shards``); the new manifest lists the generations
it replaced (``replaced_shards``) until the next save, which deletes both kinds of leftovers first; a
damaged mirror is forgotten into a manifest that keeps only those lists, for the rebuilt mirror's save.
A manifest written by ``save_blob`` (one blob: the format before shards) still loads; the next save
writes shards and deletes the single blob's chunks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
import zlib
from collections.abc import Iterable
from typing import Any

from idsync.mirror import SCHEMA_VERSION, Mirror
from idsync.ports import StateStore
from idsync.services.blobs import CHUNK_CHARS, load_blob
from idsync.services.blobs import _generations as blob_generations

SHARDS = 256
META = SHARDS  # the assignments and deleted items


def shard_of(object_id: str) -> int:
    """The shard an object id is stored in (stable across processes and versions)."""
    return zlib.crc32(object_id.encode("utf-8")) % SHARDS


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
    for index, entry in enumerate(manifest["shards"]):
        payload = _read_shard(state, key, entry)
        if payload is None:
            # forget it, keeping its generations named so the rebuilt mirror's save deletes their chunks
            state.put_item(key, {"replaced_shards": [list(g) for g in _all_generations(manifest)]})
            return None
        if index == META:
            mirror.assigned_users = set(payload["assigned_users"])
            mirror.assigned_groups = set(payload["assigned_groups"])
            mirror.soft_deleted = dict(payload["soft_deleted"])
        else:
            mirror.users.update(payload["users"])
            mirror.groups.update(payload["groups"])
            mirror.members.update(payload["members"])
    mirror.changed = set()
    return mirror


def save_mirror(state: StateStore, key: str, mirror: Mirror) -> int:
    """Store the mirror, writing only the shards that changed; returns how many were written.

    ``mirror.changed`` (ids changed since it was loaded; None: anything may have) limits which shards are
    serialised at all: an unchanged shard is neither serialised nor written. Chunks a crashed save left
    behind are deleted first. Raises StateError."""
    previous = state.get_item(key) or {}
    entries: list[dict[str, Any]] | None = previous.get("shards") if previous.get("v") == SCHEMA_VERSION else None
    leftovers = _leftovers(previous)
    for generation, count in leftovers:
        _delete_chunks(state, key, {"generation": generation, "chunks": count})
    if entries is None or mirror.changed is None:
        candidates: set[int] = set(range(SHARDS))
    else:
        candidates = {shard_of(object_id) for object_id in mirror.changed}
    candidates.add(META)
    payloads = _payloads(mirror, candidates)
    new_entries = list(entries) if entries is not None else [{} for _ in range(SHARDS + 1)]
    pending: dict[int, tuple[dict[str, Any], list[str]]] = {}
    for index in sorted(candidates):
        blob = json.dumps(payloads.pop(index), separators=(",", ":"), sort_keys=True).encode("utf-8")
        digest = hashlib.sha256(blob).hexdigest()
        if new_entries[index].get("sha256") == digest:
            continue
        text = base64.b64encode(zlib.compress(blob, 6)).decode("ascii")
        chunks = [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)] or [""]
        pending[index] = ({"generation": uuid.uuid4().hex[:12], "chunks": len(chunks), "sha256": digest}, chunks)
    if entries is not None and not pending:
        if leftovers:
            state.put_item(key, {"v": SCHEMA_VERSION, "shards": entries})
        mirror.changed = set()
        return 0
    base = {k: v for k, v in previous.items() if k not in ("pending_shards", "replaced_shards")}
    # named before written: a crash among the chunks leaves them findable by the next save or delete
    writing = [[entry["generation"], entry["chunks"]] for entry, _ in pending.values()]
    state.put_item(key, {**base, "pending_shards": writing})
    replaced: list[dict[str, Any]] = []
    for index, (entry, chunks) in pending.items():
        for number, chunk in enumerate(chunks):
            state.put_item(f"{key}@{entry['generation']}#{number}", {"data": chunk})
        if new_entries[index]:
            replaced.append(new_entries[index])
        new_entries[index] = entry
    if previous and "shards" not in previous:
        # the single blob this deployment stored before shards, and whatever its saves left behind
        replaced += [{"generation": g, "chunks": n} for g, n in blob_generations(previous)]
    manifest: dict[str, Any] = {"v": SCHEMA_VERSION, "shards": new_entries}
    if replaced:
        manifest["replaced_shards"] = [[entry["generation"], entry["chunks"]] for entry in replaced]
    state.put_item(key, manifest)
    for entry in replaced:
        _delete_chunks(state, key, entry)
    mirror.changed = set()
    return len(pending)


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
    shards = [(str(e["generation"]), int(e["chunks"])) for e in manifest.get("shards") or () if e]
    single = blob_generations(manifest) if "shards" not in manifest else []
    return list(dict.fromkeys(shards + _leftovers(manifest) + single))


def _payloads(mirror: Mirror, shards: Iterable[int]) -> dict[int, dict[str, Any]]:
    wanted = set(shards)
    out: dict[int, dict[str, Any]] = {i: {"users": {}, "groups": {}, "members": {}} for i in wanted if i != META}
    for user_id, obj in mirror.users.items():
        shard = shard_of(user_id)
        if shard in wanted:
            out[shard]["users"][user_id] = obj
    for group_id, obj in mirror.groups.items():
        shard = shard_of(group_id)
        if shard in wanted:
            out[shard]["groups"][group_id] = obj
    for group_id, members in mirror.members.items():
        shard = shard_of(group_id)
        if shard in wanted:
            out[shard]["members"][group_id] = members
    if META in wanted:
        out[META] = {
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
