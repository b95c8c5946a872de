"""Large documents (the Entra mirror) stored as chunks of small state items.

A blob is written chunk by chunk under a new generation, then a manifest naming that generation
is written last: a crash mid-write leaves the previous blob readable, never a torn one. A blob equal
to the stored one (same SHA-256) is not written again, and a blob is stored zlib-compressed (a
directory's JSON shrinks about tenfold): the mirror is most of a deployment's DynamoDB bill otherwise.
A manifest without ``encoding`` (written before compression) is read as it is.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
import zlib

from idsync.ports import StateStore

CHUNK_CHARS = 300_000  # base64 characters per item: under DynamoDB's 400 KB item limit


def save_blob(state: StateStore, key: str, blob: bytes) -> None:
    """Store ``blob`` under ``key``, unless the stored blob is the same. Raises StateError."""
    digest = hashlib.sha256(blob).hexdigest()
    previous = state.get_item(key)
    if previous and previous.get("sha256") == digest:
        return
    text = base64.b64encode(zlib.compress(blob, 6)).decode("ascii")
    generation = uuid.uuid4().hex[:12]
    chunks = [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)] or [""]
    for index, chunk in enumerate(chunks):
        state.put_item(f"{key}@{generation}#{index}", {"data": chunk})
    state.put_item(key, {"generation": generation, "chunks": len(chunks), "sha256": digest, "encoding": "zlib"})
    if previous:
        for index in range(int(previous["chunks"])):
            state.delete_item(f"{key}@{previous['generation']}#{index}")


def load_blob(state: StateStore, key: str) -> bytes | None:
    """The blob, or None when absent or damaged (the caller then rebuilds it)."""
    manifest = state.get_item(key)
    if not manifest:
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
    # forget the manifest, so the rebuilt blob is written even when its content is the same
    state.delete_item(key)


def delete_blob(state: StateStore, key: str) -> None:
    manifest = state.get_item(key)
    if not manifest:
        return
    state.delete_item(key)
    for index in range(int(manifest["chunks"])):
        state.delete_item(f"{key}@{manifest['generation']}#{index}")
