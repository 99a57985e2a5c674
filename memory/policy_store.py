"""The policies a store keeps: the text of every policy that decided (the `policies` table, by content hash), so
that an old decision can be explained with the rules it was made by, and the store's own policy (meta 'policy':
the origin the store reopens with, which every open Memory follows when another process changes it)."""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import duckdb

from engramma.memory.store import naive_utc, scalar
from engramma.policies import LivePolicy, Policy

DEFAULT_POLICY = "preset:default"


def last_good(con: duckdb.DuckDBPyConnection, origin: str | None) -> str | None:
    """The newest text a store kept for a policy origin: what stands in for a broken file, or is the policy
    itself for one given as text (`<policy HASH>`, found by its hash)."""
    if origin is None:
        return None
    if origin.startswith("<policy ") and origin.endswith(">"):
        return scalar(con, "SELECT text FROM policies WHERE content_hash = ?", [origin[len("<policy "):-1]])
    return scalar(con, "SELECT text FROM policies WHERE origin = ? ORDER BY first_used_at DESC LIMIT 1", [origin])


def text_of(con: duckdb.DuckDBPyConnection, content_hash: str | None) -> str | None:
    """The text of the policy with `content_hash`, if the store kept it."""
    return scalar(con, "SELECT text FROM policies WHERE content_hash = ?", [content_hash]) if content_hash else None


def stored_origin(con: duckdb.DuckDBPyConnection) -> str | None:
    """The origin of the store's own policy; None until a Memory first opened the store."""
    return scalar(con, "SELECT value FROM meta WHERE key = 'policy'")


def set_origin(con: duckdb.DuckDBPyConnection, origin: str) -> None:
    con.execute("INSERT OR REPLACE INTO meta VALUES ('policy', ?)", [origin])


def store_policy(con: duckdb.DuckDBPyConnection) -> LivePolicy:
    """The policy a store was given (its last good version if the file is broken now; the default if none)."""
    stored = stored_origin(con)
    return in_force(None, stored, last_good(con, stored))


def in_force(asked: str | os.PathLike | Policy | None, stored: str | None, last_good: str | None) -> LivePolicy:
    """The policy asked for (which must load), else the store's own (its last good version if now broken)."""
    if isinstance(asked, Policy):
        return LivePolicy.fixed(asked)
    if asked is not None:
        origin = str(asked) if str(asked).startswith("preset:") else str(Path(asked).resolve())
        if origin != stored:
            return LivePolicy(origin)
    return LivePolicy(stored or DEFAULT_POLICY, last_good=last_good)


def followed(con: duckdb.DuckDBPyConnection, live: LivePolicy) -> LivePolicy:
    """`live`, or the store's policy if another process set a new one since (`engramma policy set`)."""
    stored = stored_origin(con)
    if stored is not None and stored != live.origin:
        return in_force(None, stored, last_good(con, stored))
    return live


def record(con: duckdb.DuckDBPyConnection, policy: Policy, now: datetime, recorded: set[str]) -> None:
    """Keep the text of every policy that decides, so its decisions can be explained later. `recorded`: the
    hashes this process already kept (then no statement runs); `policy`'s is added."""
    if policy.content_hash not in recorded:
        con.execute("INSERT OR IGNORE INTO policies VALUES (?, ?, ?, ?, ?)",
                    [policy.content_hash, policy.name, policy.origin, policy.text, naive_utc(now)])
        recorded.add(policy.content_hash)
