"""`engramma consolidate`, `adapters ...`, `audit` and `report`: the slow memory's commands, on the CLI's app."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from engramma.cli_options import AsJson, Store, app, print_json
from engramma.errors import InvalidInput, ItemNotFound


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
        print_json([_result_dict(r) for r in results])
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
                           **{k: getattr(r.gate.metrics, k) for k in ("new_accuracy", "retention", "parent_retention",
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

    with _registry(store) as db:
        with db.transaction() as con:
            rows = registry.versions(con, store)
    if as_json:
        print_json([r.as_dict() for r in rows])
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

    with _registry(store) as db:
        with db.transaction() as con:
            adapter = registry.get(con, store, version)
            roles = registry.roles(con, version)
    data = {**adapter.as_dict(), "lineage": roles}
    if as_json:
        print_json(data)
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
    from engramma.updater.activate import activate
    from engramma.updater.gate import gate
    from engramma.updater.registry import AdapterError, AdapterStatus

    with _registry(store) as db:
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
            change = activate(con, store, adapter.train_scope, version, _now(), note=reason)
    typer.echo(f"{version} is now the active adapter of {change.train_scope}"
               + (f" ({change.retired} retired)" if change.retired else ""))


def _now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


@adapters_app.command("reject")
def adapters_reject(store: Store, version: Annotated[str, typer.Argument(help="Adapter version, e.g. v3.")],
                    reason: Annotated[str, typer.Option(help="Why, for the registry.")] = "rejected by hand") -> None:
    """Reject a candidate: it is never promoted unless promoted by hand."""
    from engramma.updater import registry

    with _registry(store) as db:
        with db.transaction() as con:
            registry.reject(con, store, version, _now(), reason)
    typer.echo(f"{version} rejected ({reason})")


@adapters_app.command("sync")
def adapters_sync(store: Store) -> None:
    """Rewrite adapters/active.json from the registry (after it was damaged or deleted by hand)."""
    from engramma.updater import registry

    with _registry(store) as db:
        with db.transaction() as con:
            active = registry.write_active_pointer(con, store)
    typer.echo("active.json rewritten: " + (", ".join(f"{scope} {e['version']}" for scope, e in active.items())
                                            or "no adapter is active (the base model answers)"))


@adapters_app.command("rollback")
def adapters_rollback(store: Store, scope: Annotated[str, typer.Option(help="Train scope to roll back.")] = "global") -> None:
    """Retire the scope's active adapter and make the previous one active again."""
    from engramma.updater import registry
    from engramma.updater.activate import activate

    with _registry(store) as db:
        with db.transaction() as con:
            retired, active = registry.rollback_target(con, store, scope)
            activate(con, store, scope, active.version if active else None, _now(), note="rolled back",
                     rollback=True)
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
    from engramma.memory.policy_store import store_policy
    from engramma.updater import load_model
    from engramma.updater.gate import gate
    from engramma.updater.merge import merge

    try:
        parsed = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise InvalidInput(f"--weights: {weights!r} is not a comma-separated list of numbers") from None
    with _registry(store) as db:
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


@app.command()
def audit(store: Store, item_id: Annotated[int, typer.Argument(help="Item id.")], as_json: AsJson = False) -> None:
    """Every adapter that saw ITEM_ID, its role (new, replay, merged) and the adapter's state, and the training
    pairs made from it (the questions it was trained on and the one held out for the gate)."""
    from engramma.updater.audit import audit_item

    with _registry(store) as db:
        with db.transaction() as con:
            try:
                found = audit_item(con, item_id)
            except ItemNotFound as e:
                raise InvalidInput(f"no item {item_id} in {store}") from e
    data = found.as_dict()
    status, route, rule, scope, pairs = found.status, found.route, found.rule, found.scope, found.pairs
    if as_json:
        print_json(data)
        return
    typer.echo(f"item {item_id} ({status}, route {route} by {rule}, scope {scope}, queue {data['queue'] or '-'})")
    if not found.adapters:
        typer.echo("  no adapter has seen it")
    for a in data["adapters"]:
        typer.echo(f"  {a['version']}\t{a['role']}\t{a['status']}{' (tainted)' if a['tainted'] else ''}\t{a['train_scope']}")
    if pairs:
        typer.echo(f"  {len(pairs)} training pair(s), made when it was first planned:")
    for p in pairs:
        typer.echo(f"    [{p['source']}{', held out' if p['heldout'] else ''}] {p['question'] or '(the statement)'} "
                   f"-> {p['answer']}")


@app.command()
def report(store: Store, out: Annotated[Path, typer.Option(help="Folder for index.html and its figures.")] = Path("report")) -> None:
    """Write an HTML report: accuracy matrix, retention, BWT, routing mix, adapter lineage, gate outcomes."""
    from engramma.updater.report import write_report

    with _registry(store) as db:
        page = write_report(db, out)
    typer.echo(f"wrote {page}")
