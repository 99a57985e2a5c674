"""The store folder's schema version and what `Memory.open` refuses to treat as a store."""
from __future__ import annotations

import duckdb
import pytest

from engramma import Item, Memory, StoreError
from engramma.memory.store import SCHEMA_VERSION


def set_schema_version(store_path, version: str) -> None:
    with duckdb.connect(str(store_path / "engramma.duckdb")) as con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [version])


def test_a_store_from_a_newer_engramma_is_refused_by_name_and_loses_nothing(mem, store_path, embedder):
    kept = mem.observe_many([Item("Refunds take 30 days."), Item("Alice likes tea.", scope="user:alice")])
    forgotten = mem.observe(Item("An obsolete note."))
    mem.forget(forgotten.id)
    before = {r.id: mem.get(r.id) for r in kept}
    mem.close()

    set_schema_version(store_path, "999")
    with pytest.raises(StoreError) as refused:
        Memory.open(store_path, embedder=embedder)
    message = str(refused.value)
    assert "999" in message and f"schema {SCHEMA_VERSION} at most" in message and "upgrade engramma" in message
    with duckdb.connect(str(store_path / "engramma.duckdb"), read_only=True) as con:
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() == [("999",)], \
            "refusing must not 'migrate' the newer store down"

    set_schema_version(store_path, str(SCHEMA_VERSION))  # as if the newer engramma were installed
    with Memory.open(store_path, embedder=embedder) as again:
        assert {i: again.get(i) for i in before} == before
        assert again.recall("tea", k=1, scope="user:alice")[0].id == kept[1].id
        stats = again.stats()
        assert (stats.items, stats.forgotten, stats.events) == (2, 1, 4)
        assert again.check() == []


def test_a_new_store_records_its_schema_version_and_embedder(mem, store_path):
    mem.close()
    with duckdb.connect(str(store_path / "engramma.duckdb"), read_only=True) as con:
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    assert (meta["schema_version"], meta["embedder"], meta["dim"]) == (str(SCHEMA_VERSION), "all-MiniLM-L6-v2", "384")


def test_a_folder_with_unrelated_files_is_refused_and_left_alone(tmp_path, embedder):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(StoreError, match="other files in it, not an engramma store"):
        Memory.open(folder, embedder=embedder)
    assert [p.name for p in folder.iterdir()] == ["holiday.jpg"], "nothing was written into the folder"


def test_a_file_where_the_store_should_be_is_refused(tmp_path, embedder):
    path = tmp_path / "notes.txt"
    path.write_text("my notes")
    with pytest.raises(StoreError, match="not a folder"):
        Memory.open(path, embedder=embedder)
    assert path.read_text() == "my notes"


def test_a_duckdb_file_that_is_not_an_engramma_store_is_refused_and_untouched(tmp_path, embedder):
    folder = tmp_path / "crm"
    folder.mkdir()
    with duckdb.connect(str(folder / "engramma.duckdb")) as con:
        con.execute("CREATE TABLE customers (name VARCHAR, city VARCHAR)")
        con.execute("INSERT INTO customers VALUES ('Alice', 'Lisbon')")
    with pytest.raises(StoreError, match=r"not an engramma store \(tables: \['customers'\]\)"):
        Memory.open(folder, embedder=embedder)
    with duckdb.connect(str(folder / "engramma.duckdb"), read_only=True) as con:
        tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        assert tables == ["customers"]
        assert con.execute("SELECT * FROM customers").fetchall() == [("Alice", "Lisbon")]


def test_a_store_file_that_is_not_duckdb_is_refused(tmp_path, embedder):
    folder = tmp_path / "store"
    folder.mkdir()
    (folder / "engramma.duckdb").write_text("milk\neggs\n" * 500)
    with pytest.raises(StoreError, match="engramma.duckdb: cannot open .*not a valid DuckDB database file"):
        Memory.open(folder, embedder=embedder)
    assert (folder / "engramma.duckdb").read_text() == "milk\neggs\n" * 500


def test_a_store_can_be_reopened_many_times(store_path, embedder):
    ids = []
    for n in range(3):
        with Memory.open(store_path, embedder=embedder) as memory:
            ids.append(memory.observe(Item(f"Visit number {n} to the store.")).id)
            assert memory.stats().items == n + 1 and memory.check() == []
    assert ids == [1, 2, 3], "ids continue across reopenings and are never reused"


def test_a_store_at_schema_1_is_migrated_and_keeps_its_items(tmp_path, embedder):
    from engramma.memory.store import schema_v1

    folder = tmp_path / "old"
    with Memory.open(folder, embedder=embedder) as mem:
        kept = mem.observe(Item("Refunds take 30 days.", key="refund_window"))
    # Rebuild the file as engramma's first schema wrote it, with the same item in it.
    with duckdb.connect(str(folder / "engramma.duckdb")) as con:
        rows = con.execute("SELECT * EXCLUDE (traces) FROM items").fetchall()  # traces came with schema 4
        policies = con.execute("SELECT * FROM policies").fetchall()
        events = con.execute("SELECT * FROM events").fetchall()
    (folder / "engramma.duckdb").unlink()
    with duckdb.connect(str(folder / "engramma.duckdb")) as con:
        for statement in schema_v1(384):
            con.execute(statement)
        con.executemany("INSERT INTO meta VALUES (?, ?)",
                        [["schema_version", "1"], ["embedder", "all-MiniLM-L6-v2"], ["dim", "384"]])
        con.executemany(f"INSERT INTO items VALUES ({', '.join('?' * len(rows[0]))})", rows)
        con.executemany("INSERT INTO policies VALUES (?, ?, ?, ?, ?)", policies)
        con.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", events)

    with Memory.open(folder, embedder=embedder) as mem:
        assert mem.get(kept.id).item.text == "Refunds take 30 days."
        assert mem.recall("refund", k=1)[0].id == kept.id
        explained = mem.explain(kept.id)  # the migrated row explains like a new one
        assert (explained.status, explained.rule) == ("kept", kept.rule)
    with duckdb.connect(str(folder / "engramma.duckdb"), read_only=True) as con:
        version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
        columns = {r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'adapters'").fetchall()}
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert version == [(str(SCHEMA_VERSION),)]
    assert {"tokens_per_s", "tainted", "items_replayed"} <= columns
    assert {"jobs", "reservoir", "reservoir_seen"} <= tables
