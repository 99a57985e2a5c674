"""The consolidation job: the update queue of each train scope becomes a new adapter version.

For each train scope with items waiting: claim them (leases), pick replay examples from what the scope's
adapters learned before, freeze the plan and its tokens in a job folder, train a LoRA adapter continuing the
scope's active one (a scope other than `global` trains on top of the active global adapter, frozen), then in
one transaction: rename the adapter folder into place, add the registry row (a `candidate`) and its lineage,
mark the queue rows done and update the reservoir. Whatever fails, the claimed items go back to pending.

Under `accelerate launch` every process runs this function: the main process alone touches the store and
prepares the plans, every process trains, the main process records the result.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from engramma.errors import EngrammaError, InvalidInput
from engramma.memory.policy_store import store_policy
from engramma.memory import items as item_rows
from engramma.memory.store import Store, open_existing, scalar
from engramma.types import Item, Name, check_scope
from engramma.policies import Policy
from engramma.policies.schema import ConsolidationSettings
from engramma.updater import anchors, mix, registry
from engramma.updater import augment as augmentation
from engramma.updater import queue as jobs
from engramma.updater.dataset import ExampleRole, TokenizedExample, example_for, tokenize
from engramma.updater.gate import GateReport, gate as run_gate
from engramma.updater.model import LanguageModel, load_model
from engramma.updater.plan import ConsolidationPlan
from engramma.updater.registry import AdapterConfig
from engramma.updater.replay import ReplayRequest, select_replay
from engramma.updater.train import BudgetExceeded, TrainReport, interference, make_accelerator, train_adapter

GLOBAL = "global"


class ResultStatus(Name):
    TRAINED = "trained"  # a new version (then promoted, rejected or left a candidate: see `gate`)
    SKIPPED = "skipped"  # nothing to train, or nothing to learn from (see `note`)
    STOPPED = "stopped"  # stopped between two steps by request; its items went back to the queue


@dataclass(frozen=True, slots=True)
class ConsolidationResult:
    train_scope: str
    status: ResultStatus
    job_id: str | None
    version: str | None = None
    parent: str | None = None
    items_new: int = 0
    items_replayed: int = 0
    report: TrainReport | None = None
    gate: GateReport | None = None  # the verdict on the new version, when the gate ran
    note: str = ""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def replay_pool(con, train_scope: str, chain: list[str], exclude: list[int], now: datetime) -> list[int]:
    """What may be replayed in `train_scope`, still kept and current: what the adapters of `chain` learned (new or
    replayed), and what the policy queued for this scope and a consolidation learned before, in a version since
    rejected, rolled back or off the chain (such items live on in the index alone). Items the policy never
    queued for this scope are never in it: replay must not carry anything into weights the policy kept it from."""
    learned = set(registry.learned_by(con, chain, roles=None)) | set(jobs.done_in_scope(con, train_scope))
    return item_rows.current(con, sorted(learned - set(exclude)), now)


# The reservoir replay strategy's state (tables `reservoir`, `reservoir_seen`): kept here, its only user.


def reservoir_among(con, train_scope: str, item_ids: list[int]) -> list[int]:
    """Those of `item_ids` in the scope's reservoir, in slot order."""
    return [r[0] for r in con.execute(
        "SELECT item_id FROM reservoir WHERE train_scope = ? AND item_id IN (SELECT unnest(?)) ORDER BY slot",
        [train_scope, item_ids]).fetchall()]


def update_reservoir(con, train_scope: str, item_ids: list[int], size: int, seed: int) -> None:
    """Reservoir sampling (algorithm R) over every item ever consolidated in the scope, seeded per position."""
    seen = scalar(con, "SELECT seen FROM reservoir_seen WHERE train_scope = ?", [train_scope]) or 0
    slots = dict(con.execute("SELECT slot, item_id FROM reservoir WHERE train_scope = ?", [train_scope]).fetchall())
    held = set(slots.values())
    for item_id in item_ids:
        if item_id in held:  # trained again (its first round was rejected): one slot is enough
            continue
        slot = seen if seen < size else int(np.random.default_rng([seed, seen]).integers(seen + 1))
        if slot < size:
            held.discard(slots.get(slot))
            slots[slot] = item_id
            held.add(item_id)
        seen += 1
    con.execute("DELETE FROM reservoir WHERE train_scope = ?", [train_scope])
    if slots:
        con.execute("INSERT INTO reservoir SELECT ?, unnest(?), unnest(?)",
                    [train_scope, list(slots), list(slots.values())])
    con.execute("INSERT OR REPLACE INTO reservoir_seen VALUES (?, ?)", [train_scope, seen])


class LeaseLost(EngrammaError):
    """A job's lease ran out while it trained and another job claimed some of its items: its work is void."""


class _Heartbeat:
    """Renews the job's leases every quarter lease while it trains (one short transaction each), and stops the
    job if it no longer holds all of its items (it was paused past its lease, and another job took them)."""

    def __init__(self, store: Store, job: jobs.Job, lease_seconds: float, items: int):
        self.store, self.job, self.lease_seconds, self.items = store, job, lease_seconds, items
        self.last = time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self.last >= self.lease_seconds / 4:
            with self.store.transaction() as con:
                held = jobs.renew(con, self.job, lease_seconds=self.lease_seconds, now=_now())
            self.last = time.monotonic()
            if held < self.items:
                raise LeaseLost(f"job {self.job.job_id} holds {held} of its {self.items} items: its lease ran out "
                                "and another job claimed the rest; stopped without recording anything")


def _plan(store: Store, job: jobs.Job, lm: LanguageModel, policy: Policy, settings: ConsolidationSettings,
          *, max_items: int | None, lease_seconds: float) -> ConsolidationResult | None:
    """Claim the scope's items, pick replay, write plan.json and examples.json into the job folder.
    Returns a result when there is nothing to train (too few items), else None."""
    now = _now()
    folder = store.folder
    with store.transaction() as con:
        jobs.skip_stale(con, now)
        # After unlearning, the scope is rebuilt from its clean ancestor rather than continued from the active.
        rebuild = registry.retrain_request(con, job.train_scope)
        if rebuild is not None:
            parent = registry.get(con, folder, rebuild.from_version) if rebuild.from_version else None
        else:
            parent = registry.active(con, folder, job.train_scope)
            if parent is not None and parent.tainted:  # never continue weights that saw forgotten items
                from engramma.updater.unlearn import clean_ancestor

                clean = clean_ancestor(con, folder, parent.version)
                parent = registry.get(con, folder, clean) if clean else None
        stacked = registry.active(con, folder, GLOBAL) if job.train_scope != GLOBAL else None
        jobs.start(con, job, parent=parent.version if parent else None, now=now,
                   config={"policy": policy.content_hash})
        new_ids = jobs.claim(con, job, limit=max_items, lease_seconds=lease_seconds, now=now)
        if len(new_ids) < settings.min_items:
            jobs.release(con, job, status=jobs.JobStatus.SKIPPED, error=None, now=now)
            return ConsolidationResult(job.train_scope, ResultStatus.SKIPPED, job.job_id,
                                       note=f"{len(new_ids)} item(s) waiting, the policy asks for {settings.min_items}")
        new_items = item_rows.load(con, new_ids)
        chain = registry.ancestors(con, parent.version if parent else None)
        pool = replay_pool(con, job.train_scope, chain, new_ids, now)
        reservoir = reservoir_among(con, job.train_scope, pool)
        new_vectors, pool_vectors = item_rows.vector_rows(con, new_ids), item_rows.vector_rows(con, pool)
        pool_items = item_rows.load(con, pool)
        pairs = augmentation.load(con, new_ids + pool)

    try:
        # Made once per item: an item queued again (its round was rejected) keeps the pairs it had.
        if missing := {i: new_items[i] for i in new_ids if i not in pairs}:
            made = augmentation.augment(lm, missing, questions=settings.augment.questions,
                                        heldout=settings.augment.heldout, generate_questions=settings.augment.generate,
                                        probes=settings.augment.probes)
            with store.transaction() as con:
                augmentation.save(con, made, _now())
            pairs.update(made)
        _write_plan(job, lm, policy, settings, new_ids, new_items, new_vectors, pool, pool_vectors, pool_items,
                    reservoir, parent, stacked, pairs)
    except BaseException as e:
        with store.transaction() as con:
            jobs.release(con, job, status=jobs.JobStatus.FAILED, error=f"{type(e).__name__}: {e}", now=_now())
        shutil.rmtree(job.folder, ignore_errors=True)
        raise
    return None


def _write_plan(job: jobs.Job, lm: LanguageModel, policy: Policy, settings: ConsolidationSettings,
                new_ids: list[int], new_items: dict[int, Item], new_vectors: np.ndarray, pool: list[int],
                pool_vectors: np.ndarray, pool_items: dict[int, Item], reservoir: list[int],
                parent: registry.AdapterVersion | None, stacked: registry.AdapterVersion | None,
                pairs: dict[int, list[augmentation.Pair]]) -> None:
    max_length = policy.spec.model.max_length
    # Seeded by what the round trains, not by the job's id (a timestamp): the same round mixes the same examples.
    rng = random.Random(f"{settings.training.seed}:{job.train_scope}:{','.join(map(str, new_ids))}")
    lines = [mix.line(item) for item in [*new_items.values(), *pool_items.values()]]

    def examples_of(ids: list[int], items: dict[int, Item], role: ExampleRole) -> list[TokenizedExample]:
        return [tokenize(e, lm.tokenizer, max_length) for i in ids
                for e in mix.item_examples(i, items[i], pairs.get(i), role, settings, rng, lines)]

    new_examples = examples_of(new_ids, new_items, ExampleRole.NEW)

    def measured(candidate_ids: list[int]) -> dict[int, float]:
        candidates = [tokenize(example_for(i, pool_items[i], ExampleRole.REPLAY), lm.tokenizer, max_length)
                      for i in candidate_ids]
        rises = interference(lm, settings, parent=parent.path if parent else None,
                             stacked=stacked.path if stacked else None, new=new_examples, candidates=candidates)
        return dict(zip(candidate_ids, rises))

    budget = min(settings.replay_budget, round(settings.replay_ratio * len(new_ids)))
    replay_ids = select_replay(settings.replay, ReplayRequest(
        new_ids=new_ids, new_vectors=new_vectors, pool_ids=pool, pool_vectors=pool_vectors, reservoir_ids=reservoir,
        budget=budget, neighbours=settings.neighbours, reservoir_fraction=settings.reservoir_fraction,
        seed=settings.training.seed, interference=measured))
    examples = new_examples + examples_of(replay_ids, pool_items, ExampleRole.REPLAY)
    examples += [tokenize(e, lm.tokenizer, max_length) for e in mix.decline_examples(
        new_items, pairs, settings.augment.decline_share, rng, lines, count=settings.augment.distractors)]
    anchor = settings.anchors
    if anchor.ratio > 0:
        train_prompts, _ = anchors.split(anchors.load_prompts(anchor.prompts), anchor.heldout)
        drawn = mix.draw(train_prompts, round(anchor.ratio * len(examples)), rng)
        answers = anchors.answers(lm, drawn, max_new_tokens=anchor.max_new_tokens)
        examples += [tokenize(e, lm.tokenizer, max_length) for e in mix.anchor_examples(answers, drawn)]
    job.folder.mkdir(parents=True, exist_ok=True)
    (job.folder / "examples.json").write_text(json.dumps(
        [{"item_id": e.item_id, "role": e.role, "input_ids": e.input_ids, "labels": e.labels} for e in examples]))
    ConsolidationPlan(
        job.job_id, job.train_scope, new_ids, replay_ids, parent.version if parent else None,
        str(parent.path) if parent else None, stacked.version if stacked else None,
        str(stacked.path) if stacked else None, lm.model_id, policy.content_hash, settings.model_dump(mode="json"),
        settings.replay, len(pool), {role.value: sum(e.role == role for e in examples) for role in ExampleRole},
    ).write(job.folder)


def _load_plan(folder: Path) -> tuple[ConsolidationPlan, list[TokenizedExample]]:
    plan = ConsolidationPlan.read(folder)
    examples = [TokenizedExample(e["item_id"], ExampleRole(e["role"]), tuple(e["input_ids"]), tuple(e["labels"]))
                for e in json.loads((folder / "examples.json").read_text())]
    return plan, examples


def _record(store: Store, job: jobs.Job, plan: ConsolidationPlan, report: TrainReport, trained: Path,
            base_hash: str, settings: ConsolidationSettings) -> ConsolidationResult:
    """One transaction: the adapter folder renamed into place, its registry row and lineage, the queue rows
    done, the reservoir updated, the job finished."""
    now = _now()
    with store.transaction() as con:
        held = jobs.held_by(con, job, plan.new)
        if held < len(plan.new):  # INVARIANT: two jobs never record the same item as new
            raise LeaseLost(f"job {job.job_id} holds {held} of its {len(plan.new)} items: its lease ran out "
                            "and another job claimed the rest; nothing recorded")
        version = registry.next_version(con)
        final = store.folder / "adapters" / version
        if final.exists():  # left by a process that died between this rename and its commit: no row owns it
            shutil.rmtree(final)
        os.replace(trained, final)
        try:
            forgotten = item_rows.not_kept(con, plan.new + plan.replay)
            lineage = {**{i: "replay" for i in plan.replay}, **{i: "new" for i in plan.new}}
            registry.add(con, version=version, parent=plan.parent, train_scope=plan.train_scope,
                         path=f"adapters/{version}", base_model=plan.base_model, base_model_hash=base_hash,
                         policy_hash=plan.policy_hash, config=AdapterConfig(
                             settings=plan.settings, replay_strategy=plan.replay_strategy, stacked_on=plan.stacked,
                             job_id=job.job_id, pool_size=plan.pool_size, examples=plan.examples,
                             padding_waste=report.padding_waste, final_loss=report.losses[-1],
                             resumed_from_epoch=report.resumed_from_epoch, processes=report.processes),
                         items_new=len(plan.new), items_replayed=len(plan.replay), tokens=report.tokens,
                         steps=report.steps, wall_s=report.wall_s, tokens_per_s=report.tokens_per_s,
                         peak_mem_mb=report.peak_mem_mb, now=now, lineage=lineage,
                         note=f"items forgotten while it trained: {forgotten}" if forgotten else None)
            if forgotten:  # learned something that must be unlearned: never promote it as it is
                registry.taint(con, [version], "saw items forgotten while it trained")
            jobs.finish(con, job, version=version, now=now)
            registry.set_job(con, version, job.job_id)
            update_reservoir(con, plan.train_scope, [i for i in plan.new if i not in forgotten],
                             settings.reservoir_size, settings.training.seed)
        except BaseException:
            os.replace(final, trained)  # the transaction rolls back: leave no folder without a row
            raise
    shutil.rmtree(job.folder, ignore_errors=True)  # it holds the items' tokens: keep no copy once recorded
    return ConsolidationResult(plan.train_scope, ResultStatus.TRAINED, job.job_id, version, plan.parent,
                               len(plan.new),
                               len(plan.replay), report)


def consolidate(store_path: str | os.PathLike, *, model: LanguageModel | str | None = None,
                scope: str | None = None, max_items: int | None = None, resume: bool = False,
                lease_seconds: float = jobs.LEASE_SECONDS, progress: bool = True, gate: bool = True,
                max_minutes: float | None = None, accelerator=None) -> list[ConsolidationResult]:
    """Train a new adapter version for each train scope with queued items (or only `scope`), then gate it.

    `model`: a loaded `LanguageModel`, a model name or folder, or None for the policy's `model.name`.
    `resume`: continue the newest job that stopped without finishing (a crash), from its last epoch checkpoint.
    `gate`: evaluate each new version and promote or reject it as the policy's gate says; False leaves it a
    candidate. `max_minutes`: a wall-clock budget for the whole run; training that would outlast it stops
    between two steps and its items go back to the queue (result status `stopped`), and scopes not reached
    are left for the next run. Returns one result per scope looked at.
    """
    from accelerate.utils import broadcast_object_list

    folder = Path(store_path)
    if scope is not None:
        check_scope(scope, "scope")
    if max_minutes is not None and max_minutes <= 0:
        raise InvalidInput(f"max_minutes: {max_minutes!r} must be a positive number of minutes")
    deadline = time.monotonic() + max_minutes * 60 if max_minutes is not None else None
    accelerator = accelerator or make_accelerator()
    main = accelerator.is_main_process
    store = open_existing(folder) if main else None
    results: list[ConsolidationResult] = []
    lm: LanguageModel | None = None
    try:
        planned: list[str] = []  # job folders to train, in order
        if main:
            with store.transaction() as con:
                policy = store_policy(con).current()
                now = _now()
                if resume:
                    candidates = jobs.resumable(con, folder, now=now, lease_seconds=lease_seconds)
                    if scope is not None:
                        candidates = [j for j in candidates if j.train_scope == scope]
                    if not candidates:
                        raise InvalidInput(f"{folder}: no interrupted consolidation job to resume")
                    try:
                        job = jobs.take_over(con, candidates[0], lease_seconds=lease_seconds, now=now)
                    except LookupError as e:
                        raise InvalidInput(f"job {candidates[0].job_id} cannot be resumed: {e}; run consolidate "
                                           "without --resume") from None
                    taken = [job]
                else:
                    jobs.skip_stale(con, now)
                    jobs.abandon_expired(con, now)
                    waiting = jobs.scopes_waiting(con, now)
                    scopes = [scope] if scope is not None else sorted(waiting, key=lambda s: (s != GLOBAL, s))
                    taken = [jobs.new_job(folder, s) for s in scopes if waiting.get(s)]
            _clean_job_folders(store)
            settings = policy.spec.consolidation
            for job in taken:
                if resume:
                    planned.append(str(job.folder))
                    continue
                lm = lm or _language_model(model, policy.spec.model.name)
                skipped = _plan(store, job, lm, policy, settings, max_items=max_items, lease_seconds=lease_seconds)
                if skipped is not None:
                    results.append(skipped)
                else:
                    planned.append(str(job.folder))
        planned_holder = [planned]
        if accelerator.num_processes > 1:
            broadcast_object_list(planned_holder)
        for job_folder in planned_holder[0]:
            plan, examples = _load_plan(Path(job_folder))
            lm = lm or _language_model(model, plan.base_model)
            job = jobs.Job(plan.job_id, plan.train_scope, Path(job_folder), jobs.owner())
            try:
                result = _train_job(store, job, plan, examples, lm, resume=resume, progress=progress,
                                    lease_seconds=lease_seconds, accelerator=accelerator, deadline=deadline)
            except BudgetExceeded as e:  # the job released its items; scopes after it wait for the next run
                results.append(ConsolidationResult(job.train_scope, ResultStatus.STOPPED, job.job_id,
                                                   items_new=len(plan.new),
                                                   note=f"{e}; its {len(plan.new)} items are queued again"))
                for later in planned_holder[0][planned_holder[0].index(job_folder) + 1:]:
                    _release_planned(store, Path(later), "the run's wall-clock budget ran out before it")
                break
            if main and gate and result.version is not None:
                result = replace(result, gate=run_gate(store, lm, result.version))
            results.append(result)
        return results if main else []
    finally:
        if store is not None:
            store.close()


def _language_model(model: LanguageModel | str | None, name: str) -> LanguageModel:
    # bare(): an agent of this process may be answering with adapters loaded into the same model
    return model.bare() if isinstance(model, LanguageModel) else load_model(model or name)


def _release_planned(store: Store | None, job_folder: Path, why: str) -> None:
    """A planned job that will not train now: its claimed items go back to the queue."""
    if store is None:
        return
    plan = ConsolidationPlan.read(job_folder)
    job = jobs.Job(plan.job_id, plan.train_scope, job_folder, jobs.owner())
    with store.transaction() as con:
        jobs.release(con, job, status=jobs.JobStatus.SKIPPED, error=why, now=_now())
    shutil.rmtree(job_folder, ignore_errors=True)


def _train_job(store: Store | None, job: jobs.Job, plan: ConsolidationPlan, examples: list[TokenizedExample],
               lm: LanguageModel, *, resume: bool, progress: bool, lease_seconds: float, accelerator,
               deadline: float | None = None) -> ConsolidationResult:
    settings = ConsolidationSettings.model_validate(plan.settings)
    trained = job.folder / "adapter"
    try:
        report = train_adapter(
            lm, examples, settings, trained, parent=Path(plan.parent_path) if plan.parent_path else None,
            stacked=Path(plan.stacked_path) if plan.stacked_path else None, checkpoints=job.folder / "checkpoints",
            resume=resume, progress=progress, accelerator=accelerator, deadline=deadline,
            heartbeat=_Heartbeat(store, job, lease_seconds, len(plan.new)) if store is not None else None)
        if store is None:
            return ConsolidationResult(job.train_scope, ResultStatus.TRAINED, job.job_id)
        return _record(store, job, plan, report, trained, lm.fingerprint, settings)
    except BaseException as e:
        if store is not None:
            with store.transaction() as con:
                jobs.release(con, job, status=jobs.JobStatus.FAILED, error=f"{type(e).__name__}: {e}",
                             now=_now())
            shutil.rmtree(job.folder, ignore_errors=True)
        raise


def _clean_job_folders(store: Store) -> None:
    """Remove the folders of jobs that ended without being resumable: they may hold items' tokens."""
    root = store.folder / "adapters" / ".jobs"
    if not root.is_dir():
        return
    with store.transaction() as con:
        running = jobs.running_jobs(con)
    for child in root.iterdir():
        if child.name not in running:
            shutil.rmtree(child, ignore_errors=True)
