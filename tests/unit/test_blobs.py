"""The mirror's blob: unchanged content costs no write, a damaged blob is rebuilt and written again."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from typing import Any

from idsync.services.blobs import load_blob, save_blob
from tests.fakes import FakeState


@dataclass
class CountingState(FakeState):
    """FakeState counting the item writes (each a billed write in DynamoDB)."""

    puts: int = 0

    def put_item(self, key: str, value: dict[str, Any]) -> None:
        self.puts += 1
        super().put_item(key, value)


def test_saving_the_same_blob_again_writes_nothing() -> None:
    state = CountingState()
    blob = os.urandom(500_000)  # incompressible: three chunks of base64
    save_blob(state, "mirror", blob)
    written = state.puts
    assert written == 5  # the manifest naming the generation about to be written, three chunks, the manifest

    save_blob(state, "mirror", blob)
    assert state.puts == written
    assert load_blob(state, "mirror") == blob

    save_blob(state, "mirror", blob + b"y")
    assert state.puts == written + 5
    assert load_blob(state, "mirror") == blob + b"y"


def test_a_damaged_blob_reads_as_absent_and_the_same_content_is_written_again() -> None:
    state = CountingState()
    blob = os.urandom(600_000)
    save_blob(state, "mirror", blob)
    manifest = state.get_item("mirror")
    assert manifest is not None
    state.delete_item(f"mirror@{manifest['generation']}#1")  # a chunk lost

    assert load_blob(state, "mirror") is None
    save_blob(state, "mirror", blob)
    assert load_blob(state, "mirror") == blob


def test_a_directory_is_stored_compressed_and_a_blob_written_before_compression_still_reads() -> None:
    state = CountingState()
    users = b"".join(b'{"id": "%06d", "department": "Engineering", "accountEnabled": true},' % i for i in range(20_000))
    save_blob(state, "mirror", users)
    manifest = state.get_item("mirror")
    assert manifest is not None
    assert manifest["chunks"] == 1  # 1.3 MB of JSON fits one item once compressed
    assert load_blob(state, "mirror") == users

    raw = b"written by an earlier version"
    state.put_item("old@g#0", {"data": base64.b64encode(raw).decode()})
    state.put_item("old", {"generation": "g", "chunks": 1, "sha256": hashlib.sha256(raw).hexdigest()})
    assert load_blob(state, "old") == raw
