"""`engramma` command line: a thin shell over `Memory`. User mistakes print one line and exit non-zero."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from engramma.errors import EngrammaError, InvalidInput, InvalidItem

app = typer.Typer(
    help="engramma: a memory that learns, for long-running agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

Store = Annotated[Path, typer.Argument(help="Store folder (created by `init` or the first write).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for machines instead of a table.")]
BATCH = 256  # items per embedding batch and transaction when ingesting


def _open(store: Path, *, must_exist: bool = True, policy: str | None = None):
    from engramma.memory import Memory

    if must_exist and not (store / "engramma.duckdb").exists():
        raise InvalidInput(f"{store}: no engramma store here; create one with `engramma init {store}`")
    return Memory.open(store, policy=policy)


def _print_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _read_lines(file: Path):
    """The raw lines of a file the user named, with one clean error if it cannot be read."""
    if not file.is_file():
        raise InvalidInput(f"{file}: no such file")
    try:
        with file.open("rb") as f:
            yield from f
    except OSError as e:
        raise InvalidInput(f"{file}: cannot read ({e.strerror})") from None


def _jsonl(file: Path):
    """(line number, parsed JSON or None for a blank line, error or None) for each line of a JSONL file. Lines
    are decoded one by one, so that a line of broken UTF-8 is reported by number like any other bad line."""
    for line_no, raw in enumerate(_read_lines(file), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield line_no, None, f"not valid UTF-8 (byte {e.start + 1} of the line)"
            continue
        if not line.strip():
            yield line_no, None, None
            continue
        try:
            yield line_no, json.loads(line), None
        except json.JSONDecodeError as e:
            yield line_no, None, f"not valid JSON ({e.msg} at column {e.colno})"


def _hit_dict(hit) -> dict:
    return {"id": hit.id, "score": round(hit.score, 4), **hit.item.to_dict()}


@app.command()
def init(
    store: Store,
    embedder: Annotated[str, typer.Option(
        help="sentence-transformers model name or local folder; the store keeps using it.")] = "all-MiniLM-L6-v2",
    policy: Annotated[Optional[str], typer.Option(
        help="Policy YAML file, or preset:NAME (default, assistant-private, index-only).")] = None,
) -> None:
    """Create an empty store folder (opening a missing store for writing also creates it)."""
    from engramma.memory import Memory

    if (store / "engramma.duckdb").exists():
        raise InvalidInput(f"{store}: a store already exists here")
    with Memory.open(store, embedder=embedder, policy=policy) as mem:
        typer.echo(f"created store {store} (embedder {embedder}, policy {mem.live_policy.origin})")


@app.command()
def observe(
    store: Store,
    text: Annotated[str, typer.Option(help="What to remember.")],
    kind: Annotated[str, typer.Option(help="fact, event, preference, correction, skill, document or conversation.")] = "fact",
    scope: Annotated[str, typer.Option(help="global, agent:<id>, user:<id> or session:<id>.")] = "global",
    source: Annotated[Optional[str], typer.Option(help="Where it came from (docs, user, tool...).")] = None,
    key: Annotated[Optional[str], typer.Option(help="Identity of a keyed fact whose value can change.")] = None,
    meta: Annotated[Optional[str], typer.Option(help="A JSON object of extra fields.")] = None,
    as_json: AsJson = False,
) -> None:
    """Remember one item and print its id and route."""
    from engramma.memory import Item

    try:
        meta_dict = json.loads(meta) if meta else {}
    except json.JSONDecodeError as e:
        raise InvalidItem(f"meta: not valid JSON ({e.msg} at character {e.pos})") from None
    item = Item(text=text, kind=kind, scope=scope, source=source, key=key, meta=meta_dict)
    with _open(store, must_exist=False) as mem:
        record = mem.observe(item)
    if as_json:
        _print_json({"id": record.id, "route": record.route, "rule": record.rule})
    else:
        typer.echo(f"{record.id}\t{record.route}\t({record.rule})")


@app.command()
def ingest(
    store: Store,
    file: Annotated[Path, typer.Argument(help="JSONL file, one item object per line (text, kind, scope, ...).")],
    as_json: AsJson = False,
) -> None:
    """Observe every item of a JSONL file; bad lines are reported by number and the rest still ingested."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from engramma.memory import Item

    total = sum(1 for _ in _read_lines(file))
    routes: dict[str, int] = {}
    bad: list[tuple[int, str]] = []
    batch: list[Item] = []

    with _open(store, must_exist=False) as mem:
        def flush(last_line: int) -> None:
            try:
                records = mem.observe_many(batch)
            except EngrammaError as e:
                done = sum(routes.values())
                raise type(e)(f"{e} (stopped at {file}:{last_line}; the {done} items before this batch of "
                              f"{len(batch)} are stored)") from None
            for record in records:
                routes[record.route] = routes.get(record.route, 0) + 1
            progress.advance(task, len(batch))
            batch.clear()

        columns = (TextColumn("ingesting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, transient=True, disable=as_json or not sys.stderr.isatty(),
                      console=_stderr_console()) as progress:
            task = progress.add_task("ingest", total=total)
            line_no = 0
            for line_no, data, error in _jsonl(file):
                if error is None and data is not None:
                    try:
                        item = Item.from_dict(data)
                        mem.check_item(item)
                        batch.append(item)
                    except InvalidItem as e:
                        error = str(e)
                if error is not None:
                    bad.append((line_no, error))
                if error is not None or data is None:
                    progress.advance(task)
                if len(batch) >= BATCH:
                    flush(line_no)
            if batch:
                flush(line_no)

    if as_json:
        _print_json({"ingested": sum(routes.values()), "routes": routes,
                     "bad_lines": [{"line": n, "error": msg} for n, msg in bad]})
    else:
        summary = ", ".join(f"{route}: {n}" for route, n in sorted(routes.items())) or "nothing"
        typer.echo(f"ingested {sum(routes.values())} items ({summary})")
        for line_no, message in bad:
            typer.echo(f"{file}:{line_no}: skipped: {message}", err=True)
    if bad:
        raise typer.Exit(1)


@app.command()
def recall(
    store: Store,
    query: Annotated[str, typer.Argument(help="What to look for, in plain words.")],
    k: Annotated[int, typer.Option("-k", min=1, help="How many items.")] = 5,
    scope: Annotated[str, typer.Option(help="Scope to search; shared scopes (global) are always included.")] = "global",
    as_of: Annotated[Optional[str], typer.Option(
        "--as-of", help="ISO time: recall what was current then (superseded values included).")] = None,
    as_json: AsJson = False,
) -> None:
    """Print the current items most similar to QUERY that SCOPE may see."""
    from datetime import datetime

    try:
        when = datetime.fromisoformat(as_of) if as_of else None
    except ValueError:
        raise InvalidInput(f"--as-of: {as_of!r} is not an ISO time such as 2026-03-05 or 2026-03-05T14:00") from None
    with _open(store) as mem:
        hits = mem.recall(query, k=k, scope=scope, as_of=when)
    if as_json:
        _print_json([_hit_dict(h) for h in hits])
        return
    if not hits:
        typer.echo("no matching items")
    for hit in hits:
        typer.echo(f"{hit.score:.3f}\t{hit.id}\t{hit.item.scope}\t{hit.item.text}")


@app.command()
def get(store: Store, item_id: Annotated[int, typer.Argument(help="Item id.")], as_json: AsJson = False) -> None:
    """Print one item and its routing decision."""
    with _open(store) as mem:
        record = mem.get(item_id)
    data = {"id": record.id, "route": record.route, "rule": record.rule, "in_index": record.in_index,
            "observed_at": record.observed_at.isoformat(), **record.item.to_dict()}
    if as_json:
        _print_json(data)
    else:
        for name, value in data.items():
            typer.echo(f"{name}: {value}")


@app.command()
def forget(
    store: Store,
    item_id: Annotated[Optional[int], typer.Argument(help="Item id to forget.")] = None,
    scope: Annotated[Optional[str], typer.Option(help="Forget every item of this scope instead.")] = None,
) -> None:
    """Erase an item (or a whole scope): text and vector are deleted, the audit trail stays."""
    if (item_id is None) == (scope is None):
        raise InvalidInput("give an item id or --scope, not both")
    with _open(store) as mem:
        n = mem.forget(item_id, scope=scope)
    typer.echo(f"forgot {n} item{'s' if n != 1 else ''}")


@app.command()
def stats(store: Store, as_json: AsJson = False) -> None:
    """Counts of items by kind, scope and route, index size and disk use."""
    with _open(store) as mem:
        s = mem.stats()
        policy_error = mem.policy_error
    if as_json:
        _print_json({**asdict(s), "policy_error": policy_error})
        return
    typer.echo(f"items: {s.items} ({s.indexed} indexed, {s.queued} queued for training, {s.forgotten} forgotten), "
               f"events: {s.events}, disk: {s.disk_bytes / 1e6:.1f} MB")
    typer.echo(f"policy: {s.policy}")
    if policy_error:
        typer.echo(f"warning: the policy file is broken, its last good version is in force: {policy_error}",
                   err=True)
    for title, counts in (("by kind", s.by_kind), ("by scope", s.by_scope), ("by route", s.by_route),
                          ("index kinds", s.index_kinds)):
        typer.echo(f"{title}: " + (", ".join(f"{k}={v}" for k, v in counts.items()) or "-"))


@app.command("rebuild-index")
def rebuild_index(store: Store) -> None:
    """Rebuild the FAISS index from the vectors kept in DuckDB (the index is a cache of the truth)."""
    with _open(store) as mem:
        n = mem.rebuild_index()
        problems = mem.check()
    typer.echo(f"rebuilt the index: {n} vectors")
    if problems:
        raise InvalidInput("index and tables still disagree: " + "; ".join(problems))


policy_app = typer.Typer(help="Check, set, explain and test routing policies.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")


@policy_app.command("check")
def policy_check(file: Annotated[str, typer.Argument(help="Policy YAML file, or preset:NAME.")]) -> None:
    """Validate a policy file; errors name the line, the key path and the accepted values."""
    from engramma.policies import load_policy

    policy = load_policy(file)
    typer.echo(f"{file}: ok (policy {policy.name!r}, {len(policy.rules)} rules, default {policy.spec.default.value}, "
               f"hash {policy.content_hash})")


@policy_app.command("set")
def policy_set(store: Store, file: Annotated[str, typer.Argument(help="Policy YAML file, or preset:NAME.")]) -> None:
    """Make FILE the store's policy from now on (earlier decisions keep the policy that made them)."""
    from engramma.policies import load_policy

    load_policy(file)  # refuse a broken file before touching the store
    with _open(store, policy=file) as mem:
        typer.echo(f"{store}: policy is now {mem.live_policy.origin} ({mem.policy.content_hash})")


@policy_app.command("explain")
def policy_explain(store: Store, item_id: Annotated[int, typer.Argument(help="Item id.")], as_json: AsJson = False) -> None:
    """Show an item's signals, the rule that matched and why each earlier rule did not."""
    with _open(store) as mem:
        ex = mem.explain(item_id)
    if as_json:
        _print_json({"id": ex.id, "status": ex.status, "route": ex.route, "rule": ex.rule, "reasons": ex.reasons,
                     "signals": ex.signals, "policy": {"name": ex.policy_name, "hash": ex.policy_hash},
                     "rules": [{"rule": t.rule, "matched": t.matched, "why": t.why} for t in ex.traces]})
        return
    typer.echo(f"item {ex.id} ({ex.status}, {ex.item.kind.value}, {ex.item.scope}): {ex.item.text}")
    typer.echo(f"route: {ex.route} by rule {ex.rule!r} of policy {ex.policy_name} ({ex.policy_hash})")
    typer.echo("signals: " + ", ".join(f"{k}={round(v, 4) if isinstance(v, float) else v}"
                                       for k, v in ex.signals.items() if k != "content_hash"))
    for trace in ex.traces:
        mark = "matched" if trace.matched else "no"
        typer.echo(f"  {mark:>7}  {trace.rule}: {'; '.join(trace.why) or 'no conditions'}")
    if ex.rule == "default":
        typer.echo("  no rule matched: the default route applied")
    for reason in ex.reasons:
        if reason.startswith(("PII found", "supersedes")):  # what the engine added to the rule's verdict
            typer.echo(f"  note: {reason}")


@policy_app.command("test")
def policy_test(
    policy: Annotated[str, typer.Argument(help="Policy YAML file, or preset:NAME.")],
    file: Annotated[Path, typer.Argument(help="JSONL items; an item may carry expected_route to compare.")],
    as_json: AsJson = False,
) -> None:
    """Dry run: route every item of FILE through POLICY in a scratch store; exit 1 on any expected_route mismatch."""
    import tempfile

    from engramma.memory import Item, Memory
    from engramma.policies import load_policy

    load_policy(policy)
    expected: list[tuple[int, str | None]] = []
    items: list[Item] = []
    for line_no, data, error in _jsonl(file):
        if error is not None:
            raise InvalidInput(f"{file}:{line_no}: {error}")
        if data is None:
            continue
        try:
            want = data.pop("expected_route", None) if isinstance(data, dict) else None
            items.append(Item.from_dict(data))
        except InvalidItem as e:
            raise InvalidInput(f"{file}:{line_no}: {e}") from None
        if want is not None and want not in ("index", "train", "both", "drop"):
            raise InvalidInput(f"{file}:{line_no}: expected_route {want!r} is not one of index, train, both, drop")
        expected.append((line_no, want))
    with tempfile.TemporaryDirectory(prefix="engramma-policy-test-") as scratch:
        with Memory.open(Path(scratch) / "store", policy=policy) as mem:
            records = [mem.observe(item) for item in items]  # one by one: each item sees those before it
    routes: dict[str, int] = {}
    rules: dict[str, int] = {}
    mismatches = []
    for (line_no, want), record in zip(expected, records):
        routes[record.route] = routes.get(record.route, 0) + 1
        rules[record.rule] = rules.get(record.rule, 0) + 1
        if want is not None and want != record.route:
            mismatches.append({"line": line_no, "expected": want, "got": record.route, "rule": record.rule,
                               "text": record.item.text[:80]})
    if as_json:
        _print_json({"items": len(records), "routes": routes, "rules": rules, "mismatches": mismatches})
    else:
        typer.echo(f"{len(records)} items: " + ", ".join(f"{r} {n}" for r, n in sorted(routes.items())))
        typer.echo("by rule: " + ", ".join(f"{r} {n}" for r, n in sorted(rules.items(), key=lambda x: -x[1])))
        for m in mismatches:
            typer.echo(f"{file}:{m['line']}: expected {m['expected']}, got {m['got']} (rule {m['rule']}): {m['text']}",
                       err=True)
        checked = sum(want is not None for _, want in expected)
        typer.echo(f"expected routes: {checked - len(mismatches)}/{checked} as expected")
    if mismatches:
        raise typer.Exit(1)


@app.command("consolidate")
def consolidate_command(
    store: Store,
    model: Annotated[Optional[str], typer.Option(
        help="Base model: a Hugging Face id in the local cache, a folder, or smollm2-135m-instruct (the "
             "policy's model.name when not given).")] = None,
    scope: Annotated[Optional[str], typer.Option(help="Only this train scope (default: every scope with items).")] = None,
    max_items: Annotated[Optional[int], typer.Option(min=1, help="At most this many queued items per scope.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the job a crash interrupted, from its last epoch checkpoint.")] = False,
    lease: Annotated[float, typer.Option(
        min=5, help="Seconds a claim on queued items lasts without renewal (a crashed job's items return after it).")] = 600.0,
    no_gate: Annotated[bool, typer.Option(
        "--no-gate", help="Leave new versions as candidates instead of evaluating, promoting or rejecting them.")] = False,
    max_minutes: Annotated[Optional[float], typer.Option(
        min=0.01, help="Wall-clock budget: training stops between two steps when it runs out, and its items "
                       "go back to the queue for the next run (default: no limit).")] = None,
    as_json: AsJson = False,
) -> None:
    """Train a new adapter version on the update queue, with replay, then gate it. Works under `accelerate launch`."""
    from engramma.updater import consolidate
    from engramma.updater.train import make_accelerator

    if not (store / "engramma.duckdb").exists():
        raise InvalidInput(f"{store}: no engramma store here; create one with `engramma init {store}`")
    accelerator = make_accelerator()  # several processes under `accelerate launch`: the main one reports
    results = consolidate(store, model=model, scope=scope, max_items=max_items, resume=resume, lease_seconds=lease,
                          progress=not as_json, gate=not no_gate, max_minutes=max_minutes, accelerator=accelerator)
    if not accelerator.is_main_process:
        return
    if as_json:
        _print_json([_result_dict(r) for r in results])
        return
    if not results:
        typer.echo("nothing to consolidate: the update queue is empty")
    for r in results:
        if r.report is None:
            typer.echo(f"{r.train_scope}: {r.status} ({r.note})")
            continue
        rep = r.report
        typer.echo(f"{r.train_scope}: trained {r.version} (parent {r.parent or 'none'}) on {r.items_new} new + "
                   f"{r.items_replayed} replayed items: {rep.steps} steps, {rep.tokens:,} tokens in {rep.wall_s:.1f} s "
                   f"({rep.tokens_per_s:,.0f} tokens/s), padding {rep.padding_waste:.1%}, final loss {rep.losses[-1]:.3f}")
        if r.gate is None:
            typer.echo(f"  candidate: promote it with `engramma adapters promote {store} {r.version}`")
            continue
        for check in r.gate.checks:
            typer.echo(f"  {'pass' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
        typer.echo(f"  {r.version} {r.gate.decision}" + (
            f": promote it by hand with `engramma adapters promote {store} {r.version}`"
            if r.gate.decision == "candidate" else ""))


def _result_dict(r) -> dict:
    out = {"train_scope": r.train_scope, "status": r.status, "job_id": r.job_id, "version": r.version,
           "parent": r.parent, "items_new": r.items_new, "items_replayed": r.items_replayed, "note": r.note}
    if r.report is not None:
        if r.gate is not None:
            out["gate"] = {"passed": r.gate.passed, "decision": r.gate.decision,
                           "checks": [asdict(c) for c in r.gate.checks],
                           **{k: r.gate.metrics.get(k) for k in ("new_accuracy", "retention", "parent_retention",
                                                                 "perplexity", "parent_perplexity", "bwt", "fwt")}}
        out.update({name: getattr(r.report, name) for name in (
            "epochs", "steps", "tokens", "label_tokens", "padding_waste", "wall_s", "tokens_per_s", "peak_mem_mb",
            "resumed_from_epoch", "processes")}, final_loss=r.report.losses[-1])
    return out


adapters_app = typer.Typer(help="List, show, promote, reject, roll back and merge adapter versions.",
                           no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")


def _registry(store: Path):
    from engramma.memory.store import open_existing

    return open_existing(store)


@adapters_app.command("list")
def adapters_list(store: Store, as_json: AsJson = False) -> None:
    """Every adapter version: scope, status, parent, items and training cost."""
    from engramma.updater import registry

    db = _registry(store)
    try:
        with db.transaction() as con:
            rows = registry.versions(con, store)
    finally:
        db.close()
    if as_json:
        _print_json([r.as_dict() for r in rows])
        return
    if not rows:
        typer.echo("no adapters yet: run `engramma consolidate` first")
    for r in rows:
        typer.echo(f"{r.version}\t{r.train_scope}\t{r.status.value}{' (tainted)' if r.tainted else ''}\t"
                   f"parent {r.parent or '-'}\t{r.items_new} new + {r.items_replayed} replayed\t{r.steps} steps\t"
                   f"{(r.tokens_per_s or 0):,.0f} tok/s\t{r.created_at:%Y-%m-%d %H:%M}")


@adapters_app.command("show")
def adapters_show(store: Store, version: Annotated[str, typer.Argument(help="Adapter version, e.g. v3.")],
                  as_json: AsJson = False) -> None:
    """One adapter version in full: its registry row and how many items of each role it saw."""
    from engramma.updater import registry

    db = _registry(store)
    try:
        with db.transaction() as con:
            adapter = registry.get(con, store, version)
            roles = dict(con.execute("SELECT role, count(*) FROM lineage WHERE adapter_version = ? GROUP BY ALL",
                                     [version]).fetchall())
    finally:
        db.close()
    data = {**adapter.as_dict(), "lineage": roles}
    if as_json:
        _print_json(data)
        return
    for name, value in data.items():
        typer.echo(f"{name}: {json.dumps(value, default=str) if isinstance(value, (dict, list)) else value}")


@adapters_app.command("promote")
def adapters_promote(
    store: Store,
    version: Annotated[str, typer.Argument(help="Adapter version, e.g. v3.")],
    reason: Annotated[Optional[str], typer.Option(
        help="Why, for the registry: needed to promote a version the gate rejected.")] = None,
    model: Annotated[Optional[str], typer.Option(
        help="Base model to evaluate a never-gated candidate with (default: the one it was trained on).")] = None,
) -> None:
    """Make VERSION the active adapter of its scope (the one it replaces is retired). A candidate that was
    never gated (`consolidate --no-gate`) is evaluated and gated first: no adapter reaches an agent unmeasured."""
    from engramma.updater import load_model, registry
    from engramma.updater.gate import gate, settle_index
    from engramma.updater.registry import AdapterError, AdapterStatus

    db = _registry(store)
    try:
        with db.transaction() as con:
            adapter = registry.get(con, store, version)
        if adapter.status is AdapterStatus.CANDIDATE and "gate" not in adapter.metrics:
            verdict = gate(db, load_model(model or adapter.base_model), version)
            for check in verdict.checks:
                typer.echo(f"  {'pass' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
            if verdict.decision == "promoted":
                typer.echo(f"{version} passed the gate and is now the active adapter of {adapter.train_scope}")
                return
            if verdict.decision == "rejected" and reason is None:
                raise AdapterError(f"{version} failed the gate and was rejected; promote it anyway with --reason")
        with db.transaction() as con:
            previous = registry.promote(con, store, version, _now(), note=reason)
            scope = registry.get(con, store, version).train_scope
            settle_index(con, store, scope, _now())
            registry.write_active_pointer(con, store)
    finally:
        db.close()
    typer.echo(f"{version} is now the active adapter of {scope}"
               + (f" ({previous.version} retired)" if previous else ""))


def _now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


@adapters_app.command("reject")
def adapters_reject(store: Store, version: Annotated[str, typer.Argument(help="Adapter version, e.g. v3.")],
                    reason: Annotated[str, typer.Option(help="Why, for the registry.")] = "rejected by hand") -> None:
    """Reject a candidate: it is never promoted unless promoted by hand."""
    from engramma.updater import registry

    db = _registry(store)
    try:
        with db.transaction() as con:
            registry.reject(con, store, version, _now(), reason)
    finally:
        db.close()
    typer.echo(f"{version} rejected ({reason})")


@adapters_app.command("rollback")
def adapters_rollback(store: Store, scope: Annotated[str, typer.Option(help="Train scope to roll back.")] = "global") -> None:
    """Retire the scope's active adapter and make the previous one active again."""
    from engramma.updater import registry
    from engramma.updater.gate import settle_index

    db = _registry(store)
    try:
        with db.transaction() as con:
            retired, active = registry.rollback(con, store, scope, _now())
            settle_index(con, store, scope, _now())
            registry.write_active_pointer(con, store)
    finally:
        db.close()
    typer.echo(f"{scope}: {retired.version} retired; " + (f"{active.version} is active again" if active else
                                                         "no adapter is active now (the base model answers)"))


@adapters_app.command("merge")
def adapters_merge(
    store: Store,
    versions: Annotated[list[str], typer.Argument(help="Two or more adapter versions.")],
    method: Annotated[str, typer.Option(help="ties, dare_ties, linear or svd.")] = "ties",
    weights: Annotated[Optional[str], typer.Option(help="Comma-separated weights, one per version (default equal).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Base model (default: the policy's).")] = None,
    no_gate: Annotated[bool, typer.Option("--no-gate", help="Leave the merge a candidate.")] = False,
) -> None:
    """Merge adapter versions into a new candidate (peft add_weighted_adapter), then gate it like any other."""
    from engramma.memory.memory import store_policy
    from engramma.updater import load_model
    from engramma.updater.gate import gate
    from engramma.updater.merge import merge

    try:
        parsed = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise InvalidInput(f"--weights: {weights!r} is not a comma-separated list of numbers") from None
    db = _registry(store)
    try:
        with db.transaction() as con:
            policy = store_policy(con).current()
        lm = load_model(model or policy.spec.model.name)
        version = merge(db, lm, versions, method=method, weights=parsed)
        typer.echo(f"merged {', '.join(versions)} ({method}) into {version}")
        if not no_gate:
            report = gate(db, lm, version)
            for check in report.checks:
                typer.echo(f"  {'pass' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
            typer.echo(f"  {version} {report.decision}")
    finally:
        db.close()


@app.command()
def audit(store: Store, item_id: Annotated[int, typer.Argument(help="Item id.")], as_json: AsJson = False) -> None:
    """Every adapter that saw ITEM_ID, its role (new, replay, merged) and the adapter's state."""
    db = _registry(store)
    try:
        with db.transaction() as con:
            item = con.execute("SELECT status, route, rule, scope FROM items WHERE id = ?", [item_id]).fetchall()
            if not item:
                raise InvalidInput(f"no item {item_id} in {store}")
            seen = con.execute(
                "SELECT a.version, l.role, a.status, a.tainted, a.train_scope, a.created_at FROM lineage l "
                "JOIN adapters a ON a.version = l.adapter_version WHERE l.item_id = ? "
                "ORDER BY CAST(substr(a.version, 2) AS INTEGER)", [item_id]).fetchall()
            queued = con.execute("SELECT status FROM queue WHERE item_id = ?", [item_id]).fetchall()
    finally:
        db.close()
    status, route, rule, scope = item[0]
    data = {"item": item_id, "status": status, "route": route, "rule": rule, "scope": scope,
            "queue": queued[0][0] if queued else None,
            "adapters": [{"version": v, "role": role, "status": st, "tainted": t, "train_scope": sc,
                          "created_at": str(at)} for v, role, st, t, sc, at in seen]}
    if as_json:
        _print_json(data)
        return
    typer.echo(f"item {item_id} ({status}, route {route} by {rule}, scope {scope}, queue {data['queue'] or '-'})")
    if not seen:
        typer.echo("  no adapter has seen it")
    for a in data["adapters"]:
        typer.echo(f"  {a['version']}\t{a['role']}\t{a['status']}{' (tainted)' if a['tainted'] else ''}\t{a['train_scope']}")


@app.command()
def report(store: Store, out: Annotated[Path, typer.Option(help="Folder for index.html and its figures.")] = Path("report")) -> None:
    """Write an HTML report: accuracy matrix, retention, BWT, routing mix, adapter lineage, gate outcomes."""
    from engramma.updater.report import write_report

    db = _registry(store)
    try:
        page = write_report(db, out)
    finally:
        db.close()
    typer.echo(f"wrote {page}")


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _fail(message: str, code: int) -> None:
    """One line on stderr, whatever the message: several problems (a policy file's) are joined by '; '."""
    one_line = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
    typer.echo(f"engramma: error: {one_line}", err=True)
    sys.exit(code)


def main() -> None:
    """Run the CLI. Every user mistake, of the library's or of the command line's, is one line on stderr."""
    import errno

    from typer._click import exceptions as click  # typer 0.2x carries its own click

    try:
        code = app(standalone_mode=False)
    except click.NoArgsIsHelpError as e:  # `engramma policy` alone: show what it offers
        typer.echo(e.ctx.get_help() if e.ctx else e.format_message())
        sys.exit(0)
    except click.UsageError as e:  # unknown command or option, a bad option value
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        _fail(e.format_message() + hint, 2)
    except EngrammaError as e:
        _fail(str(e), 1)
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", 130)
    except OSError as e:
        if e.errno == errno.EPIPE:  # `engramma recall ... | head`: the reader left, nothing to report
            sys.exit(1)
        _fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}", 1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
