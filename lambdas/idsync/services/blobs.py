"""Large documents (the Entra mirror, checkpoints of a full read) stored as chunks of small state items.

A blob is written chunk by chunk under a new generation, then a manifest naming that generation
is written last: a crash mid-write leaves the previous blob readable, never a torn one. A blob equal
to the stored one (same SHA-256) is not written again, and a blob is stored zlib-compressed (a
directory's JSON shrinks about tenfold): the mirror is most of a deployment's DynamoDB bill otherwise.
A manifest without ``encoding`` (written before compression) is read as it is.

No chunk is ever left without a manifest naming it: before writing chunks, the manifest records the
generation being written (``pending``), and the new manifest records the generation it replaces
(``replaces``) until its chunks are gone, so the next save or delete removes what a crash left behind.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
import zlib
from collections.abc import Mapping
from typing import Any

from idsync.ports import StateStore

CHUNK_CHARS = 300_000  # base64 characters per item: under DynamoDB's 400 KB item limit


def save_blob(state: StateStore, key: str, blob: bytes) -> None:
    """Store ``blob`` under ``key``, unless the stored blob is the same. Raises StateError."""
    digest = hashlib.sha256(blob).hexdigest()
    previous = state.get_item(key)
    if previous and previous.get("sha256") == digest and previous.get("generation") and "pending" not in previous:
        return
    text = base64.b64encode(zlib.compress(blob, 6)).decode("ascii")
    generation = uuid.uuid4().hex[:12]
    chunks = [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)] or [""]
    # generations an earlier save replaced: already unreferenced, so their chunks go first
    for old_generation, count in _generations(previous, own=False):
        _delete_chunks(state, key, old_generation, count)
    leftovers = _generations(previous, replaced=False)
    # named before written: a crash among the chunks leaves them findable by the next save or delete
    state.put_item(key, {**(previous or {}), "pending": [generation, len(chunks)]})
    for index, chunk in enumerate(chunks):
        state.put_item(f"{key}@{generation}#{index}", {"data": chunk})
    manifest: dict[str, Any] = {"generation": generation, "chunks": len(chunks), "sha256": digest, "encoding": "zlib"}
    if leftovers:
        manifest["replaces"] = [list(g) for g in leftovers]
    state.put_item(key, manifest)
    for old_generation, count in leftovers:
        _delete_chunks(state, key, old_generation, count)


def load_blob(state: StateStore, key: str) -> bytes | None:
    """The blob, or None when absent or damaged (the caller then rebuilds it)."""
    manifest = state.get_item(key)
    if not manifest or not manifest.get("generation"):
        return None
    parts = []
    for index in range(int(manifest["chunks"])):
        item = state.get_item(f"{key}@{manifest['generation']}#{index}")
        if item is None:
            _forget(state, key)
            return None
        parts.append(str(item["data"]))
    stored = base64.b64decode("".join(parts))
    try:
        blob = zlib.decompress(stored) if manifest.get("encoding") == "zlib" else stored
    except zlib.error:
        _forget(state, key)
        return None
    if hashlib.sha256(blob).hexdigest() != manifest["sha256"]:
        _forget(state, key)
        return None
    return blob


def _forget(state: StateStore, key: str) -> None:
    # keep the manifest's generations in a marker, so the rebuilt blob's save deletes their chunks
    manifest = state.get_item(key) or {}
    state.put_item(key, {"replaces": [list(g) for g in _generations(manifest)]})


def delete_blob(state: StateStore, key: str) -> None:
    """Delete the blob and every chunk its manifest names; the manifest goes last. Raises StateError."""
    manifest = state.get_item(key)
    if not manifest:
        return
    for generation, count in _generations(manifest):
        _delete_chunks(state, key, generation, count)
    state.delete_item(key)


def _generations(manifest: Mapping[str, Any] | None, own: bool = True, replaced: bool = True) -> list[tuple[str, int]]:
    """The chunk generations a manifest names: its own and one being written (``own``), and the ones it
    replaced whose chunks may remain (``replaced``)."""
    if not manifest:
        return []
    found: list[tuple[str, int]] = []
    if own and manifest.get("generation"):
        found.append((str(manifest["generation"]), int(manifest["chunks"])))
    pending = manifest.get("pending")
    if own and pending:
        found.append((str(pending[0]), int(pending[1])))
    if replaced:
        for generation, count in manifest.get("replaces") or ():
            found.append((str(generation), int(count)))
    return list(dict.fromkeys(found))


def _delete_chunks(state: StateStore, key: str, generation: str, count: int) -> None:
    for index in range(count):
        state.delete_item(f"{key}@{generation}#{index}")
