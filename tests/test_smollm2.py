"""The pretrained default model (SmolLM2-135M-Instruct from the bundled GGUF): slow, run by `make test-slow`."""
from __future__ import annotations

import time

import pytest

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
