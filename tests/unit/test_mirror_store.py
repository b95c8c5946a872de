"""The sharded mirror: a change rewrites only its shard, nothing is rewritten unchanged, a crash mid-save
leaves the previous mirror whole, the single-blob format still loads, and no chunk is left behind."""

from __future__ import annotations

from typing import Any

import pytest

from idsync.errors import StateError
from idsync.mirror import MemberChange, Mirror
from idsync.services.blobs import save_blob
from idsync.services.mirror_store import SHARDS, delete_mirror, load_mirror, save_mirror, shard_of
from tests.fakes import FakeState

KEY = "mirror"


def _mirror(users: int = 600) -> Mirror:
    mirror = Mirror()
    mirror.merge_users([{"id": f"u{i}", "displayName": f"User {i}"} for i in range(users)], {})
    mirror.merge_groups(
        [{"id": f"g{i}", "displayName": f"Group {i}"} for i in range(20)],
        {},
        [MemberChange(f"g{i % 20}", f"u{i}", "user", True) for i in range(users)],
    )
    mirror.set_assignments({"u1"}, {"g1"})
    mirror.soft_deleted["u9"] = "2026-11-01T00:00:00+00:00"
    return mirror


class CountingState(FakeState):
    def __init__(self) -> None:
        super().__init__()
        self.puts: list[str] = []
        self.fail_after: int | None = None

    def put_item(self, key: str, value: Any) -> None:
        if self.fail_after is not None and len(self.puts) >= self.fail_after:
            raise StateError("ProvisionedThroughputExceededException")
        self.puts.append(key)
        super().put_item(key, value)


def _chunks(state: FakeState) -> set[str]:
    return {key for key in state.items if key.startswith(f"{KEY}@")}


def _referenced(state: FakeState) -> set[str]:
    manifest = state.items[KEY]
    return {f"{KEY}@{entry['generation']}#{n}" for entry in manifest["shards"] if entry for n in range(entry["chunks"])}


def test_a_stored_mirror_loads_equal_and_a_second_save_writes_nothing() -> None:
    state = CountingState()
    mirror = _mirror()
    save_mirror(state, KEY, mirror)
    loaded = load_mirror(state, KEY)
    assert loaded == mirror
    assert loaded is not None
    state.puts.clear()
    assert save_mirror(state, KEY, loaded) == 0
    assert state.puts == []


def test_one_changed_user_rewrites_its_shard_and_the_manifest_only() -> None:
    state = CountingState()
    save_mirror(state, KEY, _mirror())
    loaded = load_mirror(state, KEY)
    assert loaded is not None
    state.puts.clear()
    # When one user changes in Entra
    loaded.merge_users([{"id": "u42", "displayName": "Renamed"}], {})
    written = save_mirror(state, KEY, loaded)
    # Then only its shard is written (the assignments' shard is unchanged), then the manifest
    assert written == 1
    assert state.puts[-1] == KEY
    assert len(state.puts) == 2
    assert load_mirror(state, KEY) == loaded
    # and the replaced generation is gone: every stored chunk is one the manifest names
    assert _chunks(state) == _referenced(state)


def test_a_crash_mid_save_leaves_the_previous_mirror_whole() -> None:
    state = CountingState()
    before = _mirror()
    save_mirror(state, KEY, before)
    loaded = load_mirror(state, KEY)
    assert loaded is not None
    loaded.merge_users([{"id": f"u{i}", "displayName": "Changed"} for i in range(0, 600, 7)], {})
    assert len({shard_of(f"u{i}") for i in range(0, 600, 7)}) > 2
    state.puts.clear()
    state.fail_after = 2
    with pytest.raises(StateError):
        save_mirror(state, KEY, loaded)
    state.fail_after = None
    assert load_mirror(state, KEY) == before


def test_the_single_blob_of_an_existing_deployment_loads_and_is_replaced_by_shards_without_orphans() -> None:
    state = CountingState()
    old = _mirror()
    save_blob(state, KEY, old.to_bytes())
    loaded = load_mirror(state, KEY)
    assert loaded == old
    assert loaded is not None
    save_mirror(state, KEY, loaded)
    assert len(state.items[KEY]["shards"]) == SHARDS + 1
    assert load_mirror(state, KEY) == old
    assert _chunks(state) == _referenced(state)
    delete_mirror(state, KEY)
    assert _chunks(state) == set()
    assert KEY not in state.items


def test_a_damaged_shard_is_forgotten_so_a_full_read_rebuilds_it() -> None:
    state = CountingState()
    save_mirror(state, KEY, _mirror())
    victim = sorted(_referenced(state))[0]
    del state.items[victim]
    assert load_mirror(state, KEY) is None
    assert KEY not in state.items
