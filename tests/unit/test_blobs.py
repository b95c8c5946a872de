"""The mirror's blob: unchanged content costs no write, a damaged blob is rebuilt and written again."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from typing import Any

import pytest

from idsync.services.blobs import delete_blob, load_blob, save_blob
from tests.fakes import Crash, FakeState


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


@dataclass
class DyingState(FakeState):
    """FakeState whose process dies before its ``dies_at``-th item write (counted from 0)."""

    dies_at: int | None = None
    puts: int = 0

    def put_item(self, key: str, value: dict[str, Any]) -> None:
        if self.dies_at is not None and self.puts >= self.dies_at:
            raise Crash(f"the process dies before writing {key}")
        self.puts += 1
        super().put_item(key, value)


def chunks(state: FakeState) -> set[str]:
    return {key for key in state.items if "@" in key}


@pytest.mark.parametrize("dies_at", range(1, 5))
def test_a_save_that_dies_among_its_chunks_leaves_none_behind_once_the_next_save_ends(dies_at: int) -> None:
    state = DyingState()
    first = os.urandom(500_000)
    save_blob(state, "mirror", first)  # three chunks
    # Given a second save that dies after writing some of its chunks (or before its manifest)
    state.dies_at, state.puts = dies_at, 0
    with pytest.raises(Crash):
        save_blob(state, "mirror", os.urandom(500_000))
    state.dies_at = None
    # Then the first blob still reads whole
    assert load_blob(state, "mirror") == first
    # and once a later save ends, only its own chunks remain
    third = os.urandom(400_000)
    save_blob(state, "mirror", third)
    assert load_blob(state, "mirror") == third
    manifest = state.get_item("mirror")
    assert manifest is not None
    assert chunks(state) == {f"mirror@{manifest['generation']}#{i}" for i in range(int(manifest["chunks"]))}
    delete_blob(state, "mirror")
    assert state.items == {}
