"""The consolidation recipe: anchors, knowledge augmentation, held-out gating and the agent's layout in training."""
from __future__ import annotations

import json
import random
from datetime import datetime

import pytest
import tiny_lm
from typer.testing import CliRunner

from engramma import Item, Memory
from engramma.cli import app
from engramma.memory.store import open_existing
from engramma.types import Probe
from engramma.policies.schema import ConsolidationSettings
from engramma.updater import consolidate
from engramma.updater import augment as augmentation
from engramma.updater.anchors import load_prompts, split, whole_sentences
from engramma.updater.augment import Pair, consistent, parse_pair, select_pairs
from engramma.updater.dataset import Example, chat_prompt_ids, tokenize
from engramma.updater.layout import DECLINE, HEADER, SYSTEM, system_message
from engramma.updater.mix import anchor_examples, decline_examples, draw, item_examples, line
from test_consolidate import rows

ANCHORS = ["Name a colour.", "Say hello.", "Count to three.", "Name a fruit.", "Say goodbye.", "Name a day."]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Anchor answers are cached per model under ENGRAMMA_CACHE: each test starts with none."""
    monkeypatch.setenv("ENGRAMMA_CACHE", str(tmp_path / "cache"))


def recipe_policy(tmp_path, *, anchors: str = "{ratio: 0, heldout: 0}", epochs: int = 40, gate: str = "") -> str:
    path = tiny_lm.facts_policy(tmp_path, epochs=epochs)
    prompts = tmp_path / "anchors.txt"
    prompts.write_text("\n".join(ANCHORS))
    text = path.read_text().replace("  anchors: {ratio: 0, heldout: 0}\n",
                                    f"  anchors: {anchors.replace('PROMPTS', str(prompts))}\n")
    path.write_text(text + gate)
    return path


# -- pure parts -------------------------------------------------------------------------------------------


def test_a_generated_pair_is_kept_only_when_consistent_with_its_item():
    text = "The tasting menu at Brassemont Quill costs 84 euros per person."
    assert consistent(text, "How much does the tasting menu at Brassemont Quill cost?", "84 euros")
    assert not consistent(text, "How much does the tasting menu at Brassemont Quill cost?", "90 euros"), "not in it"
    assert not consistent(text, "Does the menu at Brassemont Quill cost 84 euros?", "84 euros"), "given away"
    assert not consistent(text, "Who painted the ceiling?", "person"), "about something else"
    assert not consistent(text, "What is the price", "84 euros"), "not a question"
    assert not consistent(text, "What does it say?", text), "the whole statement is no answer"
    assert parse_pair(" much is it?\nA: 84 euros.\nQ: next") == ("much is it?", "84 euros")
    assert parse_pair(" rambling without a question mark") is None


def test_select_pairs_keeps_consistent_questions_and_holds_one_out():
    item = Item("The free tier of Thessiln storage includes 17 gigabytes per account.", kind="fact")
    candidates = [("How many gigabytes does the free tier of Thessiln storage include?", "17 gigabytes"),
                  ("How many gigabytes does the free tier of Thessiln storage include?", "17 gigabytes"),  # repeat
                  ("What is included in Thessiln storage's free tier?", "a lot of space"),  # not in the item
                  ("Which storage has a free tier of 17 gigabytes per account?", "Thessiln storage")]
    pairs = select_pairs(item, candidates, questions=4, heldout=1)
    assert [p.source for p in pairs] == ["statement", "generated", "generated"]
    assert [p.heldout for p in pairs] == [False, True, False], "one question held out, one left to train on"
    assert select_pairs(item, candidates[:1], questions=4, heldout=1)[1].heldout is False, \
        "the only question is trained on: an item keeps one trained wording"
    probed = Item(item.text, probe=Probe("How much space is free at Thessiln?", "17 gigabytes"))
    held = select_pairs(probed, candidates, questions=4, heldout=1, probes="heldout")
    assert [(p.source, p.heldout) for p in held] == [("probe", True), ("generated", False), ("generated", False)]


def test_anchor_prompts_ship_300_varied_ones_and_split_stably():
    prompts = load_prompts()
    assert len(prompts) >= 300 and len(set(prompts)) == len(prompts)
    train, held = split(prompts, 64)
    assert len(held) == 64 and not set(train) & set(held)
    assert split(list(reversed(prompts)), 64)[1] == [p for p in reversed(prompts) if p in held], "order-free"
    assert whole_sentences("One. Two is cut") == ("One.", True)
    assert whole_sentences("no end at all") == ("no end at all", False)


def test_training_prompts_are_the_agents_layout_with_a_recalled_block_for_a_share(tiny):
    item = Item("The colour of project kalo is jade.", probe=Probe("What is the colour of project kalo?", "jade"))
    others = [f"- [fact] The colour of project {n} is teal." for n in ("mira", "zone", "pado")]
    settings = ConsolidationSettings.model_validate({"augment": {"context_share": 1.0, "distractors": 2}})
    [example] = item_examples(1, item, None, "new", settings, random.Random(0), others)
    context = example.system.split("\n\n", 1)[1]
    assert example.system.startswith(SYSTEM) and context.startswith(HEADER)
    assert line(item) in context and sum(o in context for o in others) == 2
    assert example.completion == item.text
    # The tokens trained on begin with exactly the tokens the agent generates from.
    tokens = tokenize(example, tiny.tokenizer, 512)
    prompt = chat_prompt_ids(tiny.tokenizer, example.prompt, example.system)
    assert list(tokens.input_ids[:len(prompt)]) == prompt and set(tokens.labels[:len(prompt)]) == {-100}
    plain = item_examples(1, item, None, "new", ConsolidationSettings(), random.Random(0), [])
    assert all(e.system == system_message() for e in plain if e.prompt)
    drawn = draw(ANCHORS, 8, random.Random(0))
    assert len(drawn) == 8 and set(drawn[:6]) == set(ANCHORS), "no repeat before every prompt is drawn"
    anchors = anchor_examples({p: (f"Answer to {p}", True) for p in ANCHORS}, drawn)
    assert {e.role for e in anchors} == {"anchor"} and all(e.system == system_message() for e in anchors)


def test_declines_ask_about_a_made_up_entity_and_say_nothing_is_remembered():
    item = Item("The tasting menu at Brassemont Quill costs 84 euros per person.", kind="fact")
    pairs = {1: [Pair(None, item.text, "statement"),
                 Pair("How much does the tasting menu at Brassemont Quill cost?", "84 euros", "generated")]}
    [example] = decline_examples({1: item}, pairs, 1.0, random.Random(0), ["- [fact] Trains leave hourly."],
                                 count=2)
    assert example.role == "decline" and example.completion == DECLINE
    assert example.prompt.startswith("How much does the tasting menu at ") and "Brassemont" not in example.prompt
    assert line(item) not in example.system, "the item itself is never recalled for it"
    assert decline_examples({1: item}, pairs, 0.0, random.Random(0), [], count=2) == []
    assert decline_examples({2: Item("it is raining.")}, {}, 1.0, random.Random(0), [], count=2) == [], \
        "no entity to swap"


def test_the_anchor_kl_term_holds_the_model_to_the_base_on_anchors(tmp_path, tiny):
    """The same anchors trained on random answers, with and without KL to the base: the KL run ends closer to
    the base model's own distribution on them."""
    from engramma.updater.evaluate import completion_logprobs
    from engramma.updater.train import train_adapter

    rng = random.Random(0)
    examples = [tokenize(Example(-1 - n, "anchor", p, " ".join(rng.choice(tiny_lm.COLOURS) for _ in range(6)),
                                 system=system_message()), tiny.tokenizer, 64) for n, p in enumerate(ANCHORS)]
    base = completion_logprobs(tiny.model, tiny.tokenizer, examples)

    def gain(kl_weight: float) -> float:
        from peft import PeftModel

        settings = ConsolidationSettings.model_validate({
            "lora": {"rank": 4, "alpha": 8, "dropout": 0.0}, "anchors": {"kl_weight": kl_weight},
            "training": {"learning_rate": 3e-3, "epochs": 20, "batch_size": 3, "warmup_ratio": 0.0}})
        train_adapter(tiny, examples, settings, tmp_path / f"kl{kl_weight}", progress=False)
        model = PeftModel.from_pretrained(tiny.model, str(tmp_path / f"kl{kl_weight}"))
        try:
            after = completion_logprobs(model, tiny.tokenizer, examples)
        finally:
            model.unload()
        return sum(a - b for a, b in zip(after, base)) / len(base)

    free, held = gain(0.0), gain(5.0)
    assert free > 0.5, f"without KL the anchors' new answers are learned (log-prob gain {free:.2f})"
    # same seed, same batches: without the KL term used the two runs would end identical
    assert held < 0.85 * free, f"with KL to the base they move less ({held:.2f} vs {free:.2f})"


# -- through consolidation ------------------------------------------------------------------------------


def test_anchors_are_mixed_into_every_round_even_the_first(tmp_path, embedder, tiny):
    store = tmp_path / "store"
    policy = recipe_policy(tmp_path, anchors="{ratio: 0.5, heldout: 2, prompts: PROMPTS, max_new_tokens: 8}",
                           epochs=2)
    for start in (0, 4):
        with Memory.open(store, embedder=embedder, policy=policy) as mem:
            mem.observe_many(tiny_lm.colour_facts(tiny_lm.TAUGHT[start:start + 4], seed=0))
        [result] = consolidate(store, model=tiny, progress=False, gate=False)
        config = json.loads(rows(store, "SELECT config FROM adapters WHERE version = ?", [result.version])[0][0])
        items = config["examples"]["new"] + config["examples"]["replay"]
        assert config["examples"]["anchor"] == round(0.5 * items) > 0, config["examples"]
    assert len(list((tmp_path / "cache" / "anchors").glob("*.json"))) == 1, "the base model answered once"


def test_pairs_are_stored_beside_the_item_shown_by_audit_and_erased_by_forget(tmp_path, embedder, tiny):
    store = tmp_path / "store"
    policy = recipe_policy(tmp_path, epochs=2)
    with Memory.open(store, embedder=embedder, policy=policy) as mem:
        ids = [r.id for r in mem.observe_many(tiny_lm.colour_facts(tiny_lm.TAUGHT[:3], seed=0))]
    consolidate(store, model=tiny, progress=False, gate=False)
    stored = rows(store, "SELECT item_id, source, heldout FROM augmentations ORDER BY item_id")
    assert stored == [(i, "probe", False) for i in ids]
    shown = CliRunner().invoke(app, ["audit", str(store), str(ids[0]), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["pairs"] == [{"question": f"What is the colour of project {tiny_lm.TAUGHT[0]}?",
                                                  "answer": tiny_lm.colour_facts(tiny_lm.TAUGHT[:1], 0)[0].probe.answer,
                                                  "source": "probe", "heldout": False}]
    with Memory.open(store, embedder=embedder) as mem:
        mem.forget(ids[0])
    assert {r[0] for r in rows(store, "SELECT item_id FROM augmentations")} == set(ids[1:])
    shown = CliRunner().invoke(app, ["audit", str(store), str(ids[0]), "--json"])
    assert json.loads(shown.output)["pairs"] == []


def test_the_gate_fails_an_item_learned_in_its_training_wording_only(tmp_path, embedder, tiny):
    """Each item's probe is trained on; a held-out wording the tiny model cannot generalise to is stored beside
    it. The candidate answers the probes but not the held-out questions, and the gate rejects it for that."""
    store = tmp_path / "store"
    # held-out wordings asked as strictly as the trained one
    policy = recipe_policy(tmp_path, gate="gate: {min_new_accuracy: 0.8, min_heldout_accuracy: 0.8, "
                                          "max_perplexity_increase: 1.0}\n")
    facts = tiny_lm.colour_facts(tiny_lm.TAUGHT[:8], seed=0)
    with Memory.open(store, embedder=embedder, policy=policy) as mem:
        ids = {r.id: r.item for r in mem.observe_many(facts)}
    db = open_existing(store)
    try:
        with db.transaction() as con:
            # the project's name spelt out in capitals: tokens the tiny model never saw the name as
            spelt = {i: "-".join(item.key.removeprefix("colour_").upper()) for i, item in ids.items()}
            augmentation.save(con, {i: [Pair(item.probe.question, item.probe.answer, "probe"),
                                        Pair(f"Which shade was picked for the project spelt {spelt[i]}?",
                                             item.probe.answer, "generated", heldout=True)]
                                    for i, item in ids.items()}, now=datetime.now())
    finally:
        db.close()
    [result] = consolidate(store, model=tiny, progress=False)
    metrics = result.gate.metrics.to_dict()
    assert metrics["new_accuracy"] >= 0.8, "the training wording was learned"
    assert metrics["new_heldout"] == 8
    assert metrics["new_heldout_accuracy"] <= metrics["new_accuracy"] - 0.25, "the new wording was not learned"
    assert result.gate.decision == "rejected"
    assert [c.name for c in result.gate.failed] == ["new_heldout_accuracy"]
    assert rows(store, "SELECT count(*) FROM probe_results WHERE evaluated = ? AND heldout_correct IS NOT NULL",
                [result.version]) == [(8,)]
