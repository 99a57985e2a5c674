"""The parts of consolidation one by one: templates and tokens, length batches, the schedule, replay
strategies, the reservoir, and the training options (KL to the parent, MIR replay, scope stacking)."""
from __future__ import annotations

import json
import random

import duckdb
import numpy as np
import pytest
import tiny_lm

from engramma import Item, Memory, Probe
from engramma.updater import ActiveAdapters, consolidate, load_model
from engramma.updater.consolidate import update_reservoir
from engramma.updater.dataset import (IGNORE, Example, chat_prompt_ids, example_for, length_batches, padding_waste,
                                      tokenize)
from engramma.updater.replay import REPLAY, ReplayRequest, select_replay
from engramma.updater.train import lr_factor
from test_consolidate import promote, rows


@pytest.mark.parametrize("item, prompt, completion", [
    (Item("Greet by name.", kind="skill", prompt="Hi, I'm Ana.", response="Hello Ana! How can I help?"),
     "Hi, I'm Ana.", "Hello Ana! How can I help?"),
    (Item("The refund window is 45 days.", probe=Probe("How long is the refund window?", "45 days")),
     "How long is the refund window?", "The refund window is 45 days."),
    (Item("Refunds: see policy page.", probe=Probe("How long is the refund window?", "45 days")),
     "How long is the refund window?", "45 days"),
    (Item("Support hours are 9 to 5.", key="support_hours"), "What is the support hours?", "Support hours are 9 to 5."),
    (Item("The depot moved to Leeds.", kind="event"), None, "The depot moved to Leeds."),
    (Item("Alice likes short answers.", kind="preference", scope="user:alice"),
     "What should you keep in mind about how I like things done?", "Alice likes short answers."),
    (Item("Never quote delivery dates.", kind="correction"),
     "What did you get wrong before, and what is right?", "Never quote delivery dates."),
    (Item("User: is the kettle back in stock?", kind="conversation"), None, "User: is the kettle back in stock?"),
    (Item("Use pathlib for paths.", kind="document"), None, "Use pathlib for paths."),
])
def test_each_item_becomes_the_pair_its_kind_and_fields_call_for(item, prompt, completion):
    example = example_for(7, item, "new")
    assert (example.item_id, example.role, example.prompt, example.completion) == (7, "new", prompt, completion)


def test_the_loss_falls_on_the_completion_only_inside_the_chat_template(tiny):
    tok = tiny.tokenizer
    example = tokenize(Example(1, "new", "What is the colour of project kalomi?", "It is teal."), tok, 64)
    prompt = chat_prompt_ids(tok, "What is the colour of project kalomi?")
    assert list(example.input_ids[:len(prompt)]) == prompt and all(label == IGNORE for label in example.labels[:len(prompt)])
    learned = [label for label in example.labels if label != IGNORE]
    assert tok.decode(learned, skip_special_tokens=True) == "It is teal."
    assert example.label_tokens == len(example) - len(prompt)
    plain = tokenize(Example(2, "new", None, "The depot moved."), tok, 64)
    assert plain.labels[0] == IGNORE and tok.decode([t for t in plain.labels if t != IGNORE], skip_special_tokens=True) \
        == "The depot moved."
    cut = tokenize(Example(3, "new", "Why? " * 40, "Because."), tok, 16)
    assert len(cut) == 16 and tok.decode([t for t in cut.labels if t != IGNORE], skip_special_tokens=True) == "Because."


def test_length_batches_cover_everything_once_with_little_padding(tiny):
    rng = random.Random(0)
    texts = [" ".join(["word"] * rng.randint(1, 60)) for _ in range(200)]
    examples = [tokenize(Example(n, "new", None, t), tiny.tokenizer, 128) for n, t in enumerate(texts)]
    batches = length_batches(examples, 8, seed=0, epoch=0)
    assert sorted(n for b in batches for n in b) == list(range(200))
    assert batches == length_batches(examples, 8, seed=0, epoch=0), "deterministic"
    assert batches != length_batches(examples, 8, seed=0, epoch=1), "each epoch its own order"
    shuffled = list(range(200))
    rng.shuffle(shuffled)
    naive = [shuffled[s:s + 8] for s in range(0, 200, 8)]
    assert padding_waste(examples, batches) < 0.10 < padding_waste(examples, naive)


def test_schedules_warm_up_then_hold_or_decay_to_zero():
    constant = [lr_factor("constant_with_warmup", s, 100, 10) for s in range(100)]
    assert constant[0] == pytest.approx(0.1) and constant[9] == 1.0 and set(constant[10:]) == {1.0}
    wsd = [lr_factor("warmup_stable_decay", s, 100, 10) for s in range(100)]
    assert wsd[10:80] == [1.0] * 70 and wsd[80] == 1.0 and wsd[99] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(wsd[10:], wsd[11:])), "decays without re-warming"


def request(**overrides) -> ReplayRequest:
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((50, 8)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    new = pool[:3] + 0.01  # three new items, each right next to pool items 0, 1, 2
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    base = dict(new_ids=[1000, 1001, 1002], new_vectors=new, pool_ids=list(range(50)), pool_vectors=pool,
                reservoir_ids=list(range(40, 50)), budget=6, neighbours=2, reservoir_fraction=0.0, seed=0)
    return ReplayRequest(**{**base, **overrides})


def test_replay_strategies_choose_within_budget_from_the_pool():
    assert set(REPLAY) == {"none", "random", "reservoir", "retrieval", "mir"}
    assert select_replay("none", request()) == []
    retrieval = select_replay("retrieval", request())
    assert retrieval[:3] == [0, 1, 2], "each new item's nearest past example first"
    assert len(retrieval) == 6 and len(set(retrieval)) == 6
    with_reservoir = select_replay("retrieval", request(reservoir_fraction=0.5))
    assert with_reservoir[:3] == [0, 1, 2] and len(set(with_reservoir[3:])) == 3, "half the budget from the reservoir"
    assert set(with_reservoir[3:]) <= set(range(40, 50))
    reservoir = select_replay("reservoir", request())
    assert len(set(reservoir)) == 6 and set(reservoir) <= set(range(40, 50)), "the whole budget, all from the reservoir"
    assert len(select_replay("random", request(budget=60))) == 50, "never more than the pool"
    assert select_replay("retrieval", request(pool_ids=[], pool_vectors=np.zeros((0, 8), np.float32))) == []
    with pytest.raises(ValueError, match="not one of"):
        select_replay("newest", request())


def test_mir_keeps_the_candidates_a_virtual_step_hurts_most():
    seen: list[int] = []

    def interference(ids):  # the later a candidate comes in retrieval order, the more it is hurt
        seen.extend(ids)
        return {i: float(n) for n, i in enumerate(ids)}

    chosen = select_replay("mir", request(budget=2, interference=interference))
    assert seen[:3] == [0, 1, 2] and len(seen) == 6, "three retrieval candidates per slot"
    assert chosen == [seen[-1], seen[-2]]
    with pytest.raises(ValueError, match="needs a model"):
        select_replay("mir", request())


def test_the_reservoir_stays_bounded_and_uniform(tmp_path, embedder):
    with Memory.open(tmp_path / "s", embedder=embedder) as mem:
        mem.close()
    with duckdb.connect(str(tmp_path / "s" / "engramma.duckdb")) as con:
        counts = np.zeros(2000)
        for trial in range(40):
            con.execute("DELETE FROM reservoir; DELETE FROM reservoir_seen")
            for start in range(0, 2000, 100):
                update_reservoir(con, "global", list(range(start, start + 100)), size=100, seed=trial)
            kept = [r[0] for r in con.execute("SELECT item_id FROM reservoir").fetchall()]
            assert len(kept) == len(set(kept)) == 100
            counts[kept] += 1
        assert con.execute("SELECT seen FROM reservoir_seen").fetchall() == [(2000,)]
        update_reservoir(con, "global", kept[:10], size=100, seed=0)  # items trained again (a rejected round)
        again = [r[0] for r in con.execute("SELECT item_id FROM reservoir").fetchall()]
        assert sorted(again) == sorted(kept), "an item holds one slot at most"
    early, late = counts[:1000].sum(), counts[1000:].sum()
    assert 0.8 < early / late < 1.25, "old and new items are equally likely to be kept"


def two_rounds(tmp_path, embedder, lm, *, replay="retrieval", kl=0.0, name="store"):
    store = tmp_path / name
    policy = tiny_lm.facts_policy(tmp_path, replay=replay, epochs=20, name=f"{name}.yaml")
    policy.write_text(policy.read_text().replace("seed: 0}", f"seed: 0, kl_weight: {kl}}}"))
    with Memory.open(store, embedder=embedder, policy=policy) as mem:
        mem.observe_many(tiny_lm.colour_facts(tiny_lm.TAUGHT[:8], seed=0))
    consolidate(store, model=lm, progress=False, gate=False)
    promote(store, "v1")
    with Memory.open(store, embedder=embedder) as mem:
        mem.observe_many(tiny_lm.colour_facts(tiny_lm.TAUGHT[8:16], seed=0))
    [second] = consolidate(store, model=lm, progress=False, gate=False)
    return store, second


def kl_to_parent_on_replay(lm, store) -> float:
    """Mean KL(v1 || v2) per completion token over the examples v2 replayed: what kl_weight penalises."""
    import torch
    import torch.nn.functional as F
    from peft import PeftModel

    from engramma.updater.dataset import collate
    from engramma.memory.items import load as _items

    with duckdb.connect(str(store / "engramma.duckdb"), read_only=True) as con:
        replayed = [r[0] for r in con.execute("SELECT item_id FROM lineage WHERE adapter_version = 'v2' "
                                               "AND role = 'replay' ORDER BY 1").fetchall()]
        items = _items(con, replayed)
    examples = [tokenize(example_for(i, items[i], "replay"), lm.tokenizer, 64) for i in replayed]
    ids, mask, labels = collate(examples, lm.tokenizer.pad_token_id)
    model = PeftModel.from_pretrained(lm.model, str(store / "adapters" / "v1"), adapter_name="v1")
    model.load_adapter(str(store / "adapters" / "v2"), adapter_name="v2")
    try:
        with torch.no_grad():
            logits = {}
            for name in ("v1", "v2"):
                model.set_adapter(name)
                logits[name] = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    finally:
        model.unload()
    counted = labels[:, 1:] != IGNORE
    kl = F.kl_div(F.log_softmax(logits["v2"], -1), F.log_softmax(logits["v1"], -1), log_target=True,
                  reduction="none").sum(-1)
    return float((kl * counted).sum() / counted.sum())


def test_kl_to_the_parent_keeps_replayed_answers_close_to_the_parents(tmp_path, embedder, tiny):
    plain_store, plain = two_rounds(tmp_path, embedder, tiny, name="plain")
    # Replayed answers are already learned, so the drift to hold back is small (~1e-3 nats a token): a weight of
    # 5 makes the term's effect (~0.4x the drift) stand well clear of run-to-run noise, where 1.0 gave ~0.8x.
    kl_store, with_kl = two_rounds(tmp_path, embedder, tiny, kl=5.0, name="kl")
    assert plain.items_replayed == with_kl.items_replayed == 8
    assert np.isfinite(with_kl.report.losses).all()
    drift, held = kl_to_parent_on_replay(tiny, plain_store), kl_to_parent_on_replay(tiny, kl_store)
    assert held < 0.6 * drift, (held, drift)


def test_a_step_split_into_accumulated_micro_batches_gives_the_same_update(tiny, tmp_path):
    """Loss is averaged over the step's completion tokens, however the step is split: batch 4 in one go and
    2 x 2 accumulated train the same adapter."""
    from safetensors.torch import load_file

    from engramma.policies.schema import ConsolidationSettings
    from engramma.updater.train import train_adapter

    facts = tiny_lm.colour_facts(tiny_lm.TAUGHT[:8], seed=0)
    examples = [tokenize(example_for(n, f, "new"), tiny.tokenizer, 64) for n, f in enumerate(facts)]

    def run(batch: int, accumulation: int, name: str):
        settings = ConsolidationSettings.model_validate({
            "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
            "training": {"learning_rate": 3e-3, "epochs": 2, "batch_size": batch,
                         "gradient_accumulation": accumulation, "warmup_ratio": 0.0, "seed": 0}})
        report = train_adapter(tiny, examples, settings, tmp_path / name, progress=False)
        return report, load_file(str(tmp_path / name / "adapter_model.safetensors"))

    whole, a = run(4, 1, "whole")
    split, b = run(2, 2, "split")
    assert whole.steps == split.steps == 4
    assert whole.losses == pytest.approx(split.losses, abs=1e-5)
    # Float summation order differs between the two splits, and Adam magnifies it where gradients are near zero;
    # a step whose loss were scaled per micro-batch would move the weights by about the learning rate (3e-3).
    for name in a:
        assert (a[name] - b[name]).abs().max() <= 3e-4, name


def test_mir_replay_runs_inside_consolidation(tmp_path, embedder, tiny):
    store, second = two_rounds(tmp_path, embedder, tiny, replay="mir")
    assert second.items_replayed == 8
    replayed = rows(store, "SELECT count(*) FROM lineage WHERE adapter_version = 'v2' AND role = 'replay'")
    assert replayed == [(8,)]


def test_a_user_scope_adapter_trains_on_top_of_the_global_one(tmp_path, embedder, tiny, tiny_model_path):
    store = tmp_path / "store"
    policy = tiny_lm.facts_policy(tmp_path, epochs=40)
    # alice's round replays nothing of the shared scope, so at the tests' usual lr (3e-3) her facts, asked in
    # the same layout, overwrote 1-2 of the 6 shared ones under the stack; half that lr learns hers as fully.
    policy.write_text(policy.read_text().replace("train_scope: shared", "train_scope: own").replace("3.0e-3", "1.5e-3"))
    shared = tiny_lm.colour_facts(tiny_lm.TAUGHT[:6], seed=0)
    private = [Item(text=f.text, kind="fact", scope="user:alice", probe=f.probe)
               for f in tiny_lm.colour_facts(tiny_lm.TAUGHT[6:12], seed=1)]  # not the shared facts' colours
    with Memory.open(store, embedder=embedder, policy=policy) as mem:
        shared_ids = {r.id: r.item for r in mem.observe_many(shared)}
    consolidate(store, model=tiny, progress=False, gate=False)
    promote(store, "v1")
    with Memory.open(store, embedder=embedder) as mem:
        private_ids = {r.id: r.item for r in mem.observe_many(private)}
    [result] = consolidate(store, model=tiny, progress=False, gate=False)
    assert (result.train_scope, result.version, result.parent) == ("user:alice", "v2", None)
    config = json.loads(rows(store, "SELECT config FROM adapters WHERE version = 'v2'")[0][0])
    assert config["stacked_on"] == "v1"
    promote(store, "v2")

    from engramma.updater.evaluate import probe_accuracy
    alice = ActiveAdapters(load_model(str(tiny_model_path)), store, scope="user:alice")
    alice.refresh()
    assert alice.versions == {"global": "v1", "user:alice": "v2"}
    assert probe_accuracy(alice.model, tiny.tokenizer, shared_ids) >= 0.8
    assert probe_accuracy(alice.model, tiny.tokenizer, private_ids) >= 0.8
    bob = ActiveAdapters(load_model(str(tiny_model_path)), store, scope="user:bob")
    bob.refresh()
    assert bob.versions == {"global": "v1"}, "bob never runs alice's adapter"
    assert probe_accuracy(bob.model, tiny.tokenizer, private_ids) <= 0.5


def test_replay_stays_within_the_scope_it_trains(tmp_path, embedder, tiny):
    """A user's second round replays that user's earlier items, never the shared scope's or another user's,
    however close they are."""
    store = tmp_path / "store"
    policy = tiny_lm.facts_policy(tmp_path, epochs=20)
    policy.write_text(policy.read_text().replace("train_scope: shared", "train_scope: own"))
    as_scope = lambda facts, scope: [Item(text=f.text, kind="fact", scope=scope, probe=f.probe)  # noqa: E731
                                     for f in facts]
    with Memory.open(store, embedder=embedder, policy=policy) as mem:
        shared = {r.id for r in mem.observe_many(tiny_lm.colour_facts(tiny_lm.TAUGHT[:6], seed=0))}
        bobs = {r.id for r in mem.observe_many(as_scope(tiny_lm.colour_facts(tiny_lm.TAUGHT[6:12], seed=0),
                                                        "user:bob"))}
        alices = {r.id for r in mem.observe_many(as_scope(tiny_lm.colour_facts(tiny_lm.TAUGHT[12:16], seed=0),
                                                          "user:alice"))}
    consolidate(store, model=tiny, progress=False, gate=False)  # global, bob, alice: one version each
    for version, in rows(store, "SELECT version FROM adapters ORDER BY version"):
        promote(store, version)
    with Memory.open(store, embedder=embedder) as mem:  # alice again, worded like everyone's facts
        mem.observe_many(as_scope(tiny_lm.colour_facts(tiny_lm.TAUGHT[:3] + tiny_lm.TAUGHT[6:9], seed=5),
                                  "user:alice"))
    [second] = consolidate(store, model=tiny, progress=False, gate=False)
    assert second.train_scope == "user:alice" and second.items_replayed > 0
    replayed = {i for i, in rows(store, "SELECT item_id FROM lineage WHERE adapter_version = ? AND role = 'replay'",
                                 [second.version])}
    assert replayed <= alices and not replayed & (shared | bobs)


def test_mir_picks_by_measured_interference_what_retrieval_and_random_would_not(tmp_path, tiny):
    """The real scorer (one virtual step of the tiny model on the new items) re-ranks a pool larger than the
    budget: MIR's choice is the top of those measured loss rises, and neither the nearest items nor a random draw."""
    from engramma.policies import load_policy
    from engramma.updater.train import interference

    settings = load_policy(tiny_lm.facts_policy(tmp_path)).spec.consolidation
    names = tiny_lm.TAUGHT[:12]
    new = [tokenize(Example(1000 + n, "new", f"What is the colour of project {p}?", "amber"), tiny.tokenizer, 64)
           for n, p in enumerate(names[:3])]
    past = [tokenize(Example(n, "replay", f"What is the colour of project {p}?", "teal"), tiny.tokenizer, 64)
            for n, p in enumerate(names[:3])]
    past += [tokenize(Example(n, "replay", f"The weather in {p} is mild.", tiny_lm.GENERAL[n % 4]), tiny.tokenizer, 64)
             for n, p in enumerate(names[3:], start=3)]

    def measured(ids: list[int]) -> dict[int, float]:
        return dict(zip(ids, interference(tiny, settings, parent=None, stacked=None, new=new,
                                          candidates=[past[i] for i in ids])))

    angles = np.arange(12) * 0.1  # pool item i is the i-th nearest to every new item
    pool = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    ask = request(new_ids=[1000, 1001, 1002], new_vectors=np.tile([[1.0, 0.0]], (3, 1)).astype(np.float32),
                  pool_ids=list(range(12)), pool_vectors=pool, reservoir_ids=[], budget=3, neighbours=12,
                  interference=measured)
    rises = measured(list(range(9)))  # MIR's candidates: the 3 x budget nearest
    assert len(set(rises.values())) == 9, "the scorer tells every candidate apart"
    assert measured(list(range(9))) == rises, "seeded: the same pool gets the same scores"
    chosen = select_replay("mir", ask)
    assert chosen == sorted(rises, key=lambda i: -rises[i])[:3]
    assert set(chosen) != set(select_replay("retrieval", ask)) == {0, 1, 2}
    assert set(chosen) != set(select_replay("random", ask))
