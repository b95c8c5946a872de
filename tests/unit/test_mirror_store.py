"""The sharded mirror: a change rewrites only its shard, nothing is rewritten unchanged, a crash mid-save
leaves the previous mirror whole, the single-blob format still loads, and no chunk is left behind."""

from __future__ import annotations

from typing import Any

import pytest

from idsync.errors import StateError
from idsync.mirror import MemberChange, Mirror
from idsync.services.blobs import save_blob
from idsync.services.mirror_store import (
    JOURNAL_MIN,
    SHARDS,
    delete_mirror,
    load_mirror,
    save_mirror,
    shard_of,
)
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
    pieces = [*manifest["shards"], *manifest.get("journal", ())]
    return {f"{KEY}@{entry['generation']}#{n}" for entry in pieces if entry for n in range(entry["chunks"])}


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


def test_one_changed_user_writes_one_journal_piece_and_the_manifest_only() -> None:
    state = CountingState()
    save_mirror(state, KEY, _mirror())
    loaded = load_mirror(state, KEY)
    assert loaded is not None
    shards = dict(enumerate(state.items[KEY]["shards"]))
    state.puts.clear()
    # When one user changes in Entra
    loaded.merge_users([{"id": "u42", "displayName": "Renamed"}], {})
    written = save_mirror(state, KEY, loaded)
    # Then one journal piece is written (no shard: the assignments' is unchanged too), between the manifest
    # naming it as pending and the manifest naming it in the journal
    assert written == 1
    assert state.puts[0] == state.puts[-1] == KEY
    assert len(state.puts) == 3
    assert dict(enumerate(state.items[KEY]["shards"])) == shards
    assert len(state.items[KEY]["journal"]) == 1
    assert load_mirror(state, KEY) == loaded
    # and every stored chunk is one the manifest names
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
    assert "shards" not in state.items[KEY]
    # and the rebuilt mirror's save deletes every chunk of the damaged one
    rebuilt = _mirror(10)
    save_mirror(state, KEY, rebuilt)
    assert load_mirror(state, KEY) == rebuilt
    assert _chunks(state) == _referenced(state)


class KillingState(CountingState):
    """Raises at its ``kill_at``-th write (put or delete), as a Lambda killed mid-save would stop."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.kill_at: int | None = None

    def _write(self) -> None:
        self.writes += 1
        if self.kill_at is not None and self.writes == self.kill_at:
            raise StateError("killed")

    def put_item(self, key: str, value: Any) -> None:
        self._write()
        super().put_item(key, value)

    def delete_item(self, key: str) -> None:
        self._write()
        super().delete_item(key)


def _named(state: FakeState) -> set[str]:
    """Chunks the manifest names: its shards', and the leftovers the next save deletes."""
    manifest = state.items.get(KEY) or {}
    pieces = [*(manifest.get("shards") or ()), *(manifest.get("journal") or ())]
    generations = [(e["generation"], e["chunks"]) for e in pieces if e]
    generations += [tuple(g) for key in ("pending_shards", "replaced_shards") for g in manifest.get(key) or ()]
    generations += [(manifest["generation"], manifest["chunks"])] if manifest.get("generation") else []
    return {f"{KEY}@{g}#{n}" for g, count in generations for n in range(count)}


JOURNALLED = {"journal": 3, "compaction": JOURNAL_MIN - 2}


@pytest.mark.parametrize("start", ["shards", "single blob", "journal", "compaction"])
def test_a_save_killed_at_any_write_leaves_no_orphan_and_the_next_save_cleans_up(start: str) -> None:
    def changed(mirror: Mirror) -> Mirror:
        mirror.merge_users([{"id": f"u{i}", "displayName": "Changed"} for i in range(0, 600, 150)], {})
        mirror.merge_users([{"id": "u-new", "displayName": "Joiner"}], {})
        return mirror

    def seeded() -> KillingState:
        state = KillingState()
        if start == "single blob":
            save_blob(state, KEY, _mirror().to_bytes())
        else:
            save_mirror(state, KEY, _mirror())
        if start in JOURNALLED:
            # a journal holding objects as they are: 3 of them, or so many that the next change compacts it
            loaded = load_mirror(state, KEY)
            assert loaded is not None
            again = [{"id": f"u{i}", "displayName": f"User {i}"} for i in range(10, 10 + JOURNALLED[start])]
            loaded.merge_users(again, {})
            save_mirror(state, KEY, loaded)
            assert len(state.items[KEY]["journal"]) == 1
        state.writes = 0
        return state

    # Given the number of writes an uninterrupted save of a changed mirror makes
    reference = seeded()
    loaded = load_mirror(reference, KEY)
    assert loaded is not None
    save_mirror(reference, KEY, changed(loaded))
    total = reference.writes
    assert total > (5 if start in ("single blob", "compaction") else 2)
    # (a compaction drops the journal: the change went into the shards)
    assert ("journal" in reference.items[KEY]) == (start in ("shards", "journal"))
    for kill_at in range(1, total + 1):
        # When the save is killed at that write
        state = seeded()
        loaded = load_mirror(state, KEY)
        assert loaded is not None
        state.kill_at = kill_at
        with pytest.raises(StateError):
            save_mirror(state, KEY, changed(loaded))
        state.kill_at = None
        # Then every stored chunk is one the manifest names, and the mirror loads whole (old or new)
        assert _chunks(state) <= _named(state), kill_at
        after = load_mirror(state, KEY)
        assert after in (_mirror(), changed(_mirror())), kill_at
        assert after is not None
        # and the next save (the retried cycle) leaves exactly the chunks the shards use
        save_mirror(state, KEY, changed(after))
        assert _chunks(state) == _referenced(state), kill_at
        assert load_mirror(state, KEY) == changed(_mirror())
        # and a deleted mirror leaves nothing
        delete_mirror(state, KEY)
        assert _chunks(state) == set()
        assert KEY not in state.items


def test_changes_past_the_journals_share_are_compacted_into_their_shards() -> None:
    # Given a stored mirror of 620 objects, whose journal takes at most JOURNAL_MIN objects
    state = CountingState()
    save_mirror(state, KEY, _mirror())
    loaded = load_mirror(state, KEY)
    assert loaded is not None
    # When a first cycle changes a few users and a second more than the journal holds
    loaded.merge_users([{"id": f"u{i}", "displayName": "First"} for i in range(3)], {})
    save_mirror(state, KEY, loaded)
    assert len(state.items[KEY]["journal"]) == 1
    loaded.merge_users([{"id": f"u{i}", "displayName": "Second"} for i in range(3, 3 + JOURNAL_MIN)], {})
    written = save_mirror(state, KEY, loaded)
    # Then the second save rewrote the shards both cycles' users fall in (and the deleted items' shard: u9
    # came back) and dropped the journal
    touched = {shard_of(f"u{i}") for i in range(3 + JOURNAL_MIN)}
    assert written == len(touched) + 1
    assert "journal" not in state.items[KEY]
    assert load_mirror(state, KEY) == loaded
    assert _chunks(state) == _referenced(state)


def test_a_mirror_stored_with_another_shard_count_loads_keeps_it_for_deltas_and_is_laid_out_anew_in_full() -> None:
    # Given a mirror stored with 64 shards (another version's count)
    state = CountingState()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("idsync.services.mirror_store.SHARDS", 64)
        save_mirror(state, KEY, _mirror())
    assert len(state.items[KEY]["shards"]) == 65
    # When it is loaded, changed by a delta and compacted, it loads equal, still in 64 shards
    loaded = load_mirror(state, KEY)
    assert loaded == _mirror()
    assert loaded is not None
    loaded.merge_users([{"id": f"u{i}", "displayName": "Changed"} for i in range(JOURNAL_MIN + 1)], {})
    save_mirror(state, KEY, loaded)
    assert len(state.items[KEY]["shards"]) == 65
    assert load_mirror(state, KEY) == loaded
    # and a full save (after a full read) lays it out in this version's count, leaving no chunk behind
    loaded.changed = None
    save_mirror(state, KEY, loaded)
    assert len(state.items[KEY]["shards"]) == SHARDS + 1
    assert load_mirror(state, KEY) == loaded
    save_mirror(state, KEY, loaded)  # the next save deletes the replaced generations
    assert _chunks(state) == _referenced(state)


def test_a_damaged_journal_piece_is_forgotten_with_the_mirror() -> None:
    # Given a stored mirror with a journal piece, whose chunk is lost
    state = CountingState()
    save_mirror(state, KEY, _mirror())
    loaded = load_mirror(state, KEY)
    assert loaded is not None
    loaded.merge_users([{"id": "u1", "displayName": "Changed"}], {})
    save_mirror(state, KEY, loaded)
    piece = state.items[KEY]["journal"][0]
    del state.items[f"{KEY}@{piece['generation']}#0"]
    # Then the mirror does not load (a full read rebuilds it), and the rebuilt one's save leaves no orphan
    assert load_mirror(state, KEY) is None
    save_mirror(state, KEY, _mirror(10))
    assert load_mirror(state, KEY) == _mirror(10)
    assert _chunks(state) == _referenced(state)
