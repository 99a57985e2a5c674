"""The adapter registry: one row per adapter version, the folder it lives in, and which one is active.

An adapter is written to a temporary folder and renamed into `adapters/<version>/` before its row exists, so
the registry never points at a missing or half-written folder. Promotion is one transaction: the scope's
active version becomes `retired` and the promoted one `active`. `adapters/active.json` mirrors the active
versions for cheap polling by running agents (a view of the truth, rewritten after every change).
"""
from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from engramma.errors import EngrammaError
from engramma.memory.atomic import atomic_write_bytes
from engramma.memory.store import naive_utc
from engramma.memory.store import scalar

ACTIVE_FILE = "active.json"
POINTER_SCHEMA = 1  # active.json: {"schema": 1, "active": {scope: {version, path, base_model, base_model_hash}}}


class AdapterError(EngrammaError):
    """An adapter version that does not exist, or a transition the registry refuses."""


class AdapterStatus(str, enum.Enum):
    CANDIDATE = "candidate"  # trained, not yet judged
    ACTIVE = "active"  # what agents of its scope use now (at most one per scope)
    REJECTED = "rejected"  # failed the gate, or rejected by hand
    RETIRED = "retired"  # was active, replaced or rolled back


ADAPTER_CONFIG_SCHEMA = 1


@dataclass(frozen=True, slots=True)
class AdapterConfig:
    """How a version was made, kept in its registry row (`adapters.config`). Every field is optional: a trained
    version fills the training ones, a merge the merge ones."""

    stacked_on: str | None = None  # the shared version a user-scope adapter was trained on top of
    merged_from: list[str] | None = None  # a merge's sources: their weights are in it
    method: str | None = None  # a merge's method, weights and density
    weights: list[float] | None = None
    density: float | None = None
    job_id: str | None = None
    settings: dict | None = None  # the policy's consolidation settings it was trained with
    replay_strategy: str | None = None
    pool_size: int | None = None
    examples: dict[str, int] | None = None  # training examples by role
    padding_waste: float | None = None
    final_loss: float | None = None
    resumed_from_epoch: int | None = None
    processes: int | None = None
    schema: int = ADAPTER_CONFIG_SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | None) -> AdapterConfig:
        data = json.loads(text) if text else {}
        if data.get("schema", ADAPTER_CONFIG_SCHEMA) > ADAPTER_CONFIG_SCHEMA:
            raise AdapterError(f"adapter config schema {data['schema']} is newer than this engramma reads "
                               f"({ADAPTER_CONFIG_SCHEMA}): upgrade engramma")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})  # rows from before a field existed lack it


@dataclass(frozen=True, slots=True)
class AdapterVersion:
    version: str
    parent: str | None
    train_scope: str
    status: AdapterStatus
    path: Path  # absolute
    base_model: str
    base_model_hash: str | None
    policy_hash: str | None
    config: AdapterConfig
    metrics: dict
    items_new: int
    items_replayed: int
    tokens: int
    steps: int
    wall_s: float | None
    tokens_per_s: float | None
    peak_mem_mb: float | None
    tainted: bool
    created_at: datetime
    note: str | None

    def as_dict(self) -> dict:
        out = {name: getattr(self, name) for name in self.__slots__}
        out.update(status=self.status.value, path=str(self.path), created_at=self.created_at.isoformat(),
                   config=asdict(self.config))
        return out


COLUMNS = ("version, parent, train_scope, status, path, base_model, base_model_hash, policy_hash, config, metrics, "
           "items_new, items_replayed, tokens, steps, wall_s, tokens_per_s, peak_mem_mb, tainted, created_at, note")


def _row(store_folder: Path, row: tuple) -> AdapterVersion:
    (version, parent, scope, status, path, base_model, base_hash, policy_hash, config, metrics, items_new,
     items_replayed, tokens, steps, wall_s, tokens_per_s, peak_mem_mb, tainted, created_at, note) = row
    return AdapterVersion(version, parent, scope, AdapterStatus(status), store_folder / path, base_model, base_hash,
                          policy_hash, AdapterConfig.from_json(config), json.loads(metrics) if metrics else {},
                          items_new, items_replayed, tokens, steps, wall_s, tokens_per_s, peak_mem_mb, tainted,
                          created_at.replace(tzinfo=timezone.utc), note)


def next_version(con: duckdb.DuckDBPyConnection) -> str:
    n = con.execute("SELECT coalesce(max(CAST(substr(version, 2) AS INTEGER)), 0) FROM adapters").fetchall()[0][0]
    return f"v{n + 1}"


def add(con: duckdb.DuckDBPyConnection, *, version: str, parent: str | None, train_scope: str, path: str,
        base_model: str, base_model_hash: str, policy_hash: str | None, config: AdapterConfig, items_new: int,
        items_replayed: int, tokens: int, steps: int, wall_s: float, tokens_per_s: float, peak_mem_mb: float,
        now: datetime, lineage: dict[int, str], note: str | None = None) -> None:
    """A new candidate and its lineage (item id -> role: new | replay), in the caller's transaction."""
    con.execute(
        f"INSERT INTO adapters ({COLUMNS}, status_changed_at) VALUES "
        "(?, ?, ?, 'candidate', ?, ?, ?, ?, ?, '{}', ?, ?, ?, ?, ?, ?, ?, false, ?, ?, ?)",
        [version, parent, train_scope, path, base_model, base_model_hash, policy_hash, config.to_json(), items_new,
         items_replayed, tokens, steps, wall_s, tokens_per_s, peak_mem_mb, naive_utc(now), note, naive_utc(now)])
    if lineage:
        con.execute("INSERT INTO lineage SELECT ?, unnest(?), unnest(?)",
                    [version, list(lineage), list(lineage.values())])


# -- lineage: which items each version saw ---------------------------------------------------------------------


def saw(con: duckdb.DuckDBPyConnection, item_ids: list[int]) -> list[str]:
    """The versions whose lineage holds one of `item_ids`."""
    return [r[0] for r in con.execute("SELECT DISTINCT adapter_version FROM lineage WHERE item_id IN (SELECT unnest(?)) "
                                      "ORDER BY 1", [item_ids]).fetchall()]


def learned_by(con: duckdb.DuckDBPyConnection, versions: list[str],
               roles: tuple[str, ...] | None = ("new", "merged")) -> list[int]:
    """The items `versions` saw in one of `roles` (new, replay, merged; None: any)."""
    return [r[0] for r in con.execute(
        "SELECT DISTINCT item_id FROM lineage WHERE adapter_version IN (SELECT unnest($versions)) "
        "AND ($any OR role IN (SELECT unnest($roles))) ORDER BY 1",
        {"versions": versions, "any": roles is None, "roles": list(roles or ())}).fetchall()]


def first_learned(con: duckdb.DuckDBPyConnection, chain: list[str]) -> dict[int, str]:
    """item -> the earliest version of `chain` that learned it, as new or through a merge (a merge's own round
    holds what its sources learned outside the chain)."""
    rows = con.execute("SELECT item_id, min(CAST(substr(adapter_version, 2) AS INTEGER)) FROM lineage "
                       "WHERE role IN ('new', 'merged') AND adapter_version IN (SELECT unnest(?)) GROUP BY ALL",
                       [chain]).fetchall()
    return {item_id: f"v{n}" for item_id, n in rows}


def trained_items(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Every item some version saw, in any role."""
    return [r[0] for r in con.execute("SELECT DISTINCT item_id FROM lineage ORDER BY 1").fetchall()]


def trained_scopes(con: duckdb.DuckDBPyConnection, item_ids: list[int]) -> dict[int, str]:
    """The train scope of an adapter that saw each of `item_ids`, for those some adapter saw."""
    return dict(con.execute("SELECT l.item_id, a.train_scope FROM lineage l JOIN adapters a ON a.version = "
                            "l.adapter_version WHERE l.item_id IN (SELECT unnest(?)) ORDER BY a.created_at",
                            [item_ids]).fetchall())


def roles(con: duckdb.DuckDBPyConnection, version: str) -> dict[str, int]:
    """How many items `version` saw in each role."""
    return dict(con.execute("SELECT role, count(*) FROM lineage WHERE adapter_version = ? GROUP BY ALL",
                            [version]).fetchall())


def versions_that_saw(con: duckdb.DuckDBPyConnection, item_id: int) -> list[tuple]:
    """(version, role, status, tainted, train scope, created at) for every version that saw `item_id`, oldest
    first."""
    return con.execute(
        "SELECT a.version, l.role, a.status, a.tainted, a.train_scope, a.created_at FROM lineage l "
        "JOIN adapters a ON a.version = l.adapter_version "
        "WHERE l.item_id = ? ORDER BY CAST(substr(a.version, 2) AS INTEGER)", [item_id]).fetchall()


def taint(con: duckdb.DuckDBPyConnection, versions: list[str], note: str) -> None:
    """Mark `versions` tainted (never to be promoted again), saying why, unless they already are."""
    con.execute("UPDATE adapters SET tainted = true, note = coalesce(note || '; ', '') || ? "
                "WHERE version IN (SELECT unnest(?)) AND NOT tainted", [note, versions])


def set_metrics(con: duckdb.DuckDBPyConnection, version: str, record: dict) -> None:
    """Keep the gate's measurements and verdict on `version` (`AdapterVersion.metrics`)."""
    con.execute("UPDATE adapters SET metrics = ? WHERE version = ?", [json.dumps(record), version])


def set_job(con: duckdb.DuckDBPyConnection, version: str, job_id: str) -> None:
    con.execute("UPDATE adapters SET job_id = ? WHERE version = ?", [job_id, version])


def active_among(con: duckdb.DuckDBPyConnection, versions: list[str]) -> list[tuple[str, str]]:
    """(train scope, version) for each of `versions` that is active."""
    return con.execute("SELECT train_scope, version FROM adapters WHERE status = 'active' "
                       "AND version IN (SELECT unnest(?)) ORDER BY 1", [versions]).fetchall()


def get(con: duckdb.DuckDBPyConnection, store_folder: Path, version: str) -> AdapterVersion:
    rows = con.execute(f"SELECT {COLUMNS} FROM adapters WHERE version = ?", [version]).fetchall()
    if not rows:
        known = [r[0] for r in con.execute("SELECT version FROM adapters ORDER BY created_at").fetchall()]
        raise AdapterError(f"no adapter {version!r} in {store_folder}"
                           + (f"; the versions are {', '.join(known)}" if known else "; none has been trained yet"))
    return _row(store_folder, rows[0])


def versions(con: duckdb.DuckDBPyConnection, store_folder: Path) -> list[AdapterVersion]:
    rows = con.execute(f"SELECT {COLUMNS} FROM adapters ORDER BY CAST(substr(version, 2) AS INTEGER)").fetchall()
    return [_row(store_folder, r) for r in rows]


def active(con: duckdb.DuckDBPyConnection, store_folder: Path, train_scope: str) -> AdapterVersion | None:
    rows = con.execute(f"SELECT {COLUMNS} FROM adapters WHERE status = 'active' AND train_scope = ?",
                       [train_scope]).fetchall()
    return _row(store_folder, rows[0]) if rows else None


def descendants(con, versions: list[str]) -> list[str]:
    """`versions` and every version built on one of them: trained on from it (parent), or merged from it."""
    built_on: dict[str, list[str]] = {}
    for version, parent, config in con.execute("SELECT version, parent, config FROM adapters").fetchall():
        for source in [parent, *(AdapterConfig.from_json(config).merged_from or [])]:
            if source is not None:
                built_on.setdefault(source, []).append(version)
    found, todo = dict.fromkeys(versions), list(versions)
    while todo:
        for child in built_on.get(todo.pop(), []):
            if child not in found:
                found[child] = None
                todo.append(child)
    return list(found)


def ancestors(con, version: str | None) -> list[str]:
    """`version` and its parents, newest first."""
    chain = []
    while version is not None and version not in chain:
        chain.append(version)
        version = scalar(con, "SELECT parent FROM adapters WHERE version = ?", [version])
    return chain


def usable(adapter: AdapterVersion) -> bool:
    """Can be made active: untainted, and its folder is there and complete."""
    return not adapter.tainted and (adapter.path / "adapter_config.json").is_file()


def set_status(con: duckdb.DuckDBPyConnection, version: str, status: AdapterStatus, now: datetime,
               note: str | None = None) -> None:
    # Notes accumulate ("tainted ...; rolled back ..."): the row tells its whole story.
    con.execute("UPDATE adapters SET status = $status, status_changed_at = $now, "
                "note = CASE WHEN $note IS NULL THEN note WHEN note IS NULL THEN $note ELSE note || '; ' || $note END "
                "WHERE version = $version",
                {"status": status.value, "now": naive_utc(now), "note": note, "version": version})


def promote(con: duckdb.DuckDBPyConnection, store_folder: Path, version: str, now: datetime,
            note: str | None = None) -> AdapterVersion | None:
    """Make `version` its scope's active adapter; the one it replaces is retired and returned."""
    adapter = get(con, store_folder, version)
    if adapter.status is AdapterStatus.ACTIVE:
        raise AdapterError(f"{version} is already the active adapter of {adapter.train_scope}")
    if adapter.status is AdapterStatus.REJECTED and note is None:
        raise AdapterError(f"{version} was rejected ({adapter.note or 'by hand'}); promoting it needs --reason")
    if adapter.tainted:
        raise AdapterError(f"{version} is tainted (it, or a version it was built on, saw items that were forgotten "
                           "since) and cannot be promoted")
    if not usable(adapter):
        raise AdapterError(f"{version}: its folder {adapter.path} is missing or incomplete; it cannot be promoted")
    previous = active(con, store_folder, adapter.train_scope)
    if previous is not None:
        set_status(con, previous.version, AdapterStatus.RETIRED, now)
    set_status(con, version, AdapterStatus.ACTIVE, now, note)
    con.execute("UPDATE adapters SET replaced = ? WHERE version = ?", [previous.version if previous else None, version])
    # A rebuild after unlearning is done once one built from the clean ancestor is in use: not when it is
    # trained (the gate may reject it, and the next round must rebuild again rather than continue the tainted).
    con.execute("DELETE FROM retrain_requests WHERE train_scope = ? AND from_version IS NOT DISTINCT FROM ?",
                [adapter.train_scope, adapter.parent])
    return previous


@dataclass(frozen=True, slots=True)
class RetrainRequest:
    """Unlearning asked for a scope to be rebuilt from `from_version` (None: the base model), not continued."""

    train_scope: str
    from_version: str | None
    requested_at: datetime
    reason: str


def request_retrain(con: duckdb.DuckDBPyConnection, train_scope: str, from_version: str | None, now: datetime, *,
                    reason: str) -> None:
    """The next round of `train_scope` trains from `from_version`; `promote` clears the request once a version
    built that way is in use."""
    con.execute("INSERT OR REPLACE INTO retrain_requests VALUES (?, ?, ?, ?)",
                [train_scope, from_version, naive_utc(now), reason])


def retrain_request(con: duckdb.DuckDBPyConnection, train_scope: str) -> RetrainRequest | None:
    rows = con.execute("SELECT train_scope, from_version, requested_at, reason FROM retrain_requests "
                       "WHERE train_scope = ?", [train_scope]).fetchall()
    return RetrainRequest(*rows[0]) if rows else None


def reject(con: duckdb.DuckDBPyConnection, store_folder: Path, version: str, now: datetime, note: str) -> None:
    adapter = get(con, store_folder, version)
    if adapter.status is not AdapterStatus.CANDIDATE:
        raise AdapterError(f"{version} is {adapter.status.value}; only a candidate can be rejected "
                           "(roll back an active adapter instead)")
    set_status(con, version, AdapterStatus.REJECTED, now, note)


def rollback_target(con: duckdb.DuckDBPyConnection, store_folder: Path,
                    train_scope: str) -> tuple[AdapterVersion, AdapterVersion | None]:
    """What a rollback of the scope goes back to: the version its active adapter replaced (going further back
    past versions that are tainted or whose folder is gone). Returns (active now, target; None: the base model).
    `activate.activate(..., rollback=True)` makes the change."""
    current = active(con, store_folder, train_scope)
    if current is None:
        raise AdapterError(f"no active adapter in {train_scope}: nothing to roll back")
    target, seen = None, {current.version}
    previous = scalar(con, "SELECT replaced FROM adapters WHERE version = ?", [current.version])
    while previous is not None and previous not in seen:
        seen.add(previous)
        candidate = get(con, store_folder, previous)
        if usable(candidate):
            target = candidate
            break
        previous = scalar(con, "SELECT replaced FROM adapters WHERE version = ?", [previous])
    return current, target


def write_active_pointer(con: duckdb.DuckDBPyConnection, store_folder: Path) -> dict[str, dict]:
    """Rewrite adapters/active.json from the registry (call after the transaction that changed it); returns
    what it wrote."""
    rows = con.execute("SELECT train_scope, version, path, base_model, base_model_hash FROM adapters "
                       "WHERE status = 'active' ORDER BY train_scope").fetchall()
    data = {scope: {"version": version, "path": path, "base_model": base, "base_model_hash": digest}
            for scope, version, path, base, digest in rows}
    atomic_write_bytes(store_folder / "adapters" / ACTIVE_FILE,
                       json.dumps({"schema": POINTER_SCHEMA, "active": data}, indent=1).encode())
    return data


def read_active_pointer(store_folder: Path) -> dict[str, dict]:
    """The active adapter of each scope, as adapters/active.json says; {} before any promotion. A damaged file
    is an error, never "no adapter": an agent would otherwise quietly answer with the base model."""
    path = store_folder / "adapters" / ACTIVE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError) as e:
        raise AdapterError(f"{path} is damaged ({e}); it is a view of the registry: rewrite it with "
                           f"`engramma adapters sync {store_folder}`") from None
    if isinstance(data, dict) and "schema" in data:
        if data["schema"] != POINTER_SCHEMA:
            raise AdapterError(f"{path} has schema {data['schema']!r}, this engramma reads {POINTER_SCHEMA}; rewrite "
                               f"it from the registry with `engramma adapters sync {store_folder}`")
        data = data.get("active")
    # (A file without a schema is the plain map engramma wrote before it had one.)
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "version" in v and "path" in v
                                             for v in data.values()):
        raise AdapterError(f"{path} does not hold a scope -> adapter map; rewrite it from the registry with "
                           f"`engramma adapters sync {store_folder}`")
    return data
