"""`engramma` command line: a thin shell over `Memory` (memory and policy commands here; consolidation, the
adapter registry, audit and report in `cli_updater`). User mistakes print one line and exit non-zero."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from engramma.cli_options import AsJson, Store, app, print_json
from engramma.errors import EngrammaError, InvalidInput, InvalidItem

BATCH = 256  # items per embedding batch and transaction when ingesting


def _open(store: Path, *, must_exist: bool = True, policy: str | None = None):
    from engramma import Memory

    if must_exist and not (store / "engramma.duckdb").exists():
        raise InvalidInput(f"{store}: no engramma store here; create one with `engramma init {store}`")
    return Memory.open(store, policy=policy)


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
    from engramma import Memory

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
        print_json({"id": record.id, "route": record.route, "rule": record.rule})
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
        print_json({"ingested": sum(routes.values()), "routes": routes,
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
        print_json([_hit_dict(h) for h in hits])
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
        print_json(data)
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
        print_json({**asdict(s), "policy_error": policy_error})
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
        print_json({"id": ex.id, "status": ex.status, "route": ex.route, "rule": ex.rule, "reasons": ex.reasons,
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
    from engramma import Item
    from engramma.dry_run import Case, dry_run
    from engramma.policies import load_policy

    load_policy(policy)
    cases: list[Case] = []
    for line_no, data, error in _jsonl(file):
        if error is not None:
            raise InvalidInput(f"{file}:{line_no}: {error}")
        if data is None:
            continue
        try:
            want = data.pop("expected_route", None) if isinstance(data, dict) else None
            cases.append(Case(Item.from_dict(data), want, line_no))
        except InvalidItem as e:
            raise InvalidInput(f"{file}:{line_no}: {e}") from None
    try:
        run = dry_run(policy, cases)
    except InvalidItem as e:
        raise InvalidInput(f"{file}:{e}") from None
    if as_json:
        print_json(run.as_dict())
    else:
        typer.echo(f"{run.items} items: " + ", ".join(f"{r} {n}" for r, n in run.routes.items()))
        typer.echo("by rule: " + ", ".join(f"{r} {n}" for r, n in run.rules.items()))
        for m in run.mismatches:
            typer.echo(f"{file}:{m.label}: expected {m.expected}, got {m.got} (rule {m.rule}): {m.text}", err=True)
        typer.echo(f"expected routes: {run.checked - len(run.mismatches)}/{run.checked} as expected")
    if run.mismatches:
        raise typer.Exit(1)


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


# The consolidation, registry, audit and report commands live beside this module, on the same app.
from engramma import cli_updater  # noqa: E402, F401

if __name__ == "__main__":  # `python -m engramma.cli`
    main()
