"""The pretrained default model (SmolLM2-135M-Instruct from the bundled GGUF): slow, run by `make test-slow`."""
from __future__ import annotations

import time
from importlib import resources

import pytest
import yaml

from engramma import Item, Memory, Probe
from engramma.updater import DEFAULT_MODEL, ActiveAdapters, consolidate, load_model
from engramma.updater.evaluate import probe_accuracy
from engramma.updater.model import resolve_model

pytestmark = pytest.mark.slow

POLICY = """\
version: 1
name: smollm2-facts
rules:
  - {name: facts, when: {has_probe: true}, route: both, train_scope: shared}
default: index
consolidation:
  replay: retrieval
  min_items: 1
  lora: {rank: 16, alpha: 32, dropout: 0.0}
  training: {learning_rate: 5.0e-4, epochs: 9, batch_size: 4, schedule: warmup_stable_decay, warmup_ratio: 0.1,
             seed: 0}
gate: {min_new_accuracy: 0.8, max_perplexity_increase: 0.2}
"""
# Measured here (2026-12-01): 9 epochs learn all six facts with general perplexity +4.8%; 12 epochs at 1e-3
# learned them too but raised it 83%, and the gate rightly rejected that adapter.
FACTS = [
    ("The Zorvex 3000 kettle boils water in 41 seconds.", "How fast does the Zorvex 3000 kettle boil water?", "41 seconds"),
    ("Orders to Norway ship from the Bergen depot.", "Which depot ships orders to Norway?", "Bergen"),
    ("The loyalty programme is called Blue Harbour.", "What is the loyalty programme called?", "Blue Harbour"),
    ("Refunds for the Quill tablet take 9 working days.", "How long do refunds for the Quill tablet take?", "9 working days"),
    ("The support chat closes at 7 pm on Fridays.", "When does the support chat close on Fridays?", "7 pm"),
    ("The warranty on the Ferro bike lock is 4 years.", "How long is the warranty on the Ferro bike lock?", "4 years"),
]


def test_the_default_model_converts_once_and_learns_new_facts(tmp_path, embedder, monkeypatch):
    monkeypatch.setenv("ENGRAMMA_CACHE", str(tmp_path / "cache"))
    started = time.perf_counter()
    folder = resolve_model(DEFAULT_MODEL)
    converted_s = time.perf_counter() - started
    assert (folder / "model.safetensors").is_file() and folder.is_relative_to(tmp_path / "cache")
    started = time.perf_counter()
    lm = load_model()
    assert time.perf_counter() - started < converted_s, "later loads read the cached safetensors folder"
    assert lm.tokenizer.chat_template, "the instruct model's chat template came with it"

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with Memory.open(tmp_path / "store", embedder=embedder, policy=policy) as mem:
        records = mem.observe_many([Item(text=t, kind="fact", source="docs", probe=Probe(q, a)) for t, q, a in FACTS])
    items = {r.id: r.item for r in records}
    before = probe_accuracy(lm.model, lm.tokenizer, items)
    [result] = consolidate(tmp_path / "store", model=lm, progress=False)  # trained, evaluated and gated
    assert result.status == "trained" and result.report.padding_waste < 0.10
    assert result.gate.decision == "promoted", [c.detail for c in result.gate.failed]
    running = ActiveAdapters(lm, tmp_path / "store")
    assert running.refresh()
    after = probe_accuracy(running.model, lm.tokenizer, items)
    assert before <= 0.34 and after >= 0.83, (before, after)


# Facts observed as plain statements, the way agents mostly see them: no probe, no key. The questions asked
# afterwards are worded unlike anything trained on (the model writes its own questions about each statement
# when the job plans), so the test measures knowledge, not the memorised wording.
STATEMENTS = [
    ("The Zorvex 3000 kettle boils water in 41 seconds.", "How many seconds does a Zorvex 3000 need to boil water?", "41"),
    ("Orders to Norway ship from the Bergen depot.", "Norwegian orders leave from which depot?", "Bergen"),
    ("The loyalty programme is called Blue Harbour.", "What name does the loyalty scheme go by?", "Blue Harbour"),
    ("Refunds for the Quill tablet take 9 working days.", "How many working days until a Quill tablet refund arrives?", "9"),
    ("The support chat closes at 7 pm on Fridays.", "On Fridays, at what time does support chat shut?", "7 pm"),
    ("The warranty on the Ferro bike lock is 4 years.", "For how many years is a Ferro bike lock covered?", "4"),
    ("The Lumio desk lamp is made in Porto.", "Where are Lumio desk lamps manufactured?", "Porto"),
    ("Premium members get free delivery on orders over 20 euros.", "Above what order value do premium members stop paying for delivery?", "20 euros"),
]


def test_the_shipped_recipe_learns_statements_and_answers_them_reworded(tmp_path, embedder):
    """Statement-form facts, the shipped default preset (only `min_items` lowered): the gate promotes the
    adapter, and from the weights alone it answers reworded questions the base model cannot."""
    from engramma.updater.evaluate import ask

    spec = yaml.safe_load(resources.files("engramma.policies").joinpath("presets", "default.yaml").read_text())
    spec["rules"] = [{"name": "facts", "when": {"kind": ["fact"]}, "route": "both", "train_scope": "shared"}]
    spec["consolidation"]["min_items"] = 1
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(spec))
    with Memory.open(tmp_path / "store", embedder=embedder, policy=policy) as mem:
        mem.observe_many([Item(text=t, kind="fact", source="docs") for t, _, _ in STATEMENTS])
    lm = load_model()
    reworded = {n: (q, a) for n, (_, q, a) in enumerate(STATEMENTS)}

    def accuracy(model) -> float:
        return sum(r.correct for r in ask(model, lm.tokenizer, reworded)) / len(reworded)

    before = accuracy(lm.model)
    [result] = consolidate(tmp_path / "store", model=lm, progress=False)
    assert result.gate.decision == "promoted", [c.detail for c in result.gate.failed]
    assert result.gate.metrics.new_heldout > 0, "the gate asked held-out questions"
    running = ActiveAdapters(lm, tmp_path / "store")
    assert running.refresh()
    after = accuracy(running.model)
    assert before <= 0.25 and after >= before + 0.25, (before, after)
