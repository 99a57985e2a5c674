"""engramma in an agent loop (tiny model): context within a budget, corrections learned overnight, users kept
apart, triggers that never stall the loop, and the LlamaIndex retriever and memory block."""
from __future__ import annotations

import asyncio

import pytest
import tiny_lm

from engramma import Item, Memory
from engramma.agents import ConsolidationTrigger, LocalAgent, context_block, observe_correction, observe_rating, \
    observe_turn
from engramma.agents.context import approximate_tokens
from engramma.errors import InvalidItem
from engramma.updater import consolidate, load_model

AGENT_POLICY = """\
version: 1
name: support-agent
signals:
  source_trust: {user: 0.7, chat: 0.3}
rules:
  - {name: secrets, when: {pii_any: [credit_card, password, api_key]}, route: drop}
  - {name: private-details, when: {pii_any: [email, phone]}, route: index}
  - {name: corrections, when: {kind: [correction], source_trust: {gte: 0.6}}, route: both, train_scope: shared}
  - {name: liked-replies, when: {kind: [skill], feedback: {gte: 0.8}}, route: train, train_scope: shared}
  - {name: chatter, when: {kind: [conversation]}, route: index, ttl: 30d}
default: index
model: {max_length: 64}
consolidation:
  replay: retrieval
  min_items: 1
  lora: {rank: 8, alpha: 16, dropout: 0.0}
  training: {learning_rate: 3.0e-3, epochs: 60, batch_size: 4, warmup_ratio: 0.05}
  # the tiny model can neither write questions nor answer general prompts: no anchors, no generated pairs
  anchors: {ratio: 0, heldout: 0}
  augment: {generate: false, context_share: 0, decline_share: 0}
# the tiny model knows no general text (perplexity in the thousands); 3 of 4 corrections learned is enough here
gate: {max_perplexity_increase: 1.0, min_new_accuracy: 0.75}
"""


def rows(memory: Memory, sql: str, params=()) -> list[tuple]:
    """Read the store through the open Memory's own connection (a second one in this process is refused)."""
    with memory.store.transaction() as con:
        return con.execute(sql, list(params)).fetchall()


@pytest.fixture
def agent_store(tmp_path, embedder):
    policy = tmp_path / "agent.yaml"
    policy.write_text(AGENT_POLICY)
    memory = Memory.open(tmp_path / "store", embedder=embedder, policy=policy)
    yield memory
    memory.close()


def test_the_context_block_fits_its_budget_and_its_scope(agent_store, tiny_model_path):
    agent_store.observe_many([
        Item("Alice's parcel goes to the Leeds depot.", scope="user:alice"),
        Item("Bob's parcel goes to the Bristol depot.", scope="user:bob"),
        Item("Parcels to depots arrive within two working days."),
        Item("Depot opening hours are 8am to 6pm."),
    ])
    block = context_block(agent_store, "where is my parcel going?", scope="user:alice", budget_tokens=200)
    assert block.startswith("What you remember") and "Leeds" in block and "Bristol" not in block
    assert "two working days" in block
    tight = context_block(agent_store, "where is my parcel going?", scope="user:alice", budget_tokens=25)
    assert 1 < len(tight.splitlines()) < len(block.splitlines()), "a tight budget keeps only the best"
    assert approximate_tokens(tight) <= 25 and approximate_tokens(block) <= 200
    from transformers import AutoTokenizer  # a real tokenizer: the block as the model counts it fits too

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_path))
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    sizes = []
    for budget in (80, 120, 200):
        fitted = context_block(agent_store, "where is my parcel going?", scope="user:alice", budget_tokens=budget,
                               count_tokens=count)
        assert fitted and count(fitted) <= budget, (budget, count(fitted))
        sizes.append(len(fitted.splitlines()))
    assert sizes[0] < sizes[-1], "the budgets tested really cut the block"
    assert context_block(agent_store, "quantum chromodynamics lecture notes", scope="user:alice",
                         min_score=0.6) == "", "nothing relevant: no block"


def test_answer_many_answers_each_question_as_answer_does(agent_store, tiny):
    """Batched answers are the one-by-one answers: each question gets its own recalled context."""
    agent_store.observe_many([Item(text=f.text, kind="fact", source="docs") for f in
                              tiny_lm.colour_facts(tiny_lm.TAUGHT[:3], seed=0)])
    agent = LocalAgent(tiny, agent_store, max_new_tokens=8)
    questions = [f"What is the colour of project {name}?" for name in tiny_lm.TAUGHT[:3]] + ["Trains leave when?"]
    for recall in (True, False):
        one_by_one = [agent.answer(q, recall=recall) for q in questions]
        batched = agent.answer_many(questions, recall=recall, batch_size=3)
        assert [a.text for a in batched] == [a.text for a in one_by_one]
        assert [a.context for a in batched] == [a.context for a in one_by_one]
    contexts = [a.context for a in agent.answer_many(questions)]
    assert all(name in c for name, c in zip(tiny_lm.TAUGHT[:3], contexts)), "each question recalls its own fact"
    assert len(set(contexts[:3])) == 3


def test_feedback_becomes_items_the_policy_routes(agent_store):
    turn = observe_turn(agent_store, user="Where is my order?", reply="It left the depot today.", scope="session:s1")
    assert [r.item.kind.value for r in turn] == ["conversation", "conversation"] and turn[0].route == "index"
    fixed = observe_correction(agent_store, question="How long do refunds take?", wrong="60 days",
                               right="Refunds take 30 days.", probe_answer="30 days", scope="global")
    assert fixed.route == "both" and fixed.item.prompt == "How long do refunds take?"
    liked = observe_rating(agent_store, question="Can I change my address?", reply="Yes, in Settings > Address.",
                           rating=0.9, scope="global")
    assert liked.route == "train" and liked.item.meta == {"feedback": 0.9}
    meh = observe_rating(agent_store, question="Do you ship abroad?", reply="Maybe.", rating=0.2, scope="global")
    assert meh.route == "index"
    with pytest.raises(InvalidItem, match="rating"):
        observe_rating(agent_store, question="q", reply="r", rating=4, scope="global")


def test_a_correction_made_on_day_one_is_answered_on_day_two_and_users_stay_apart(agent_store, tiny, tiny_model_path):
    facts = tiny_lm.colour_facts(tiny_lm.TAUGHT[:4], seed=0)
    alice = LocalAgent(tiny, agent_store, scope="user:alice", max_new_tokens=16)
    # Day one: alice shares a private detail and corrects the agent four times.
    agent_store.observe(Item("My email is alice.smith@example.com, write to me there.", kind="preference",
                             scope="user:alice", source="user"))
    before = [alice.answer(f.probe.question, recall=False).text for f in facts]
    for fact, said in zip(facts, before):
        observe_correction(agent_store, question=fact.probe.question, wrong=said or None, right=fact.text,
                           probe_answer=fact.probe.answer, scope="user:alice")
    assert sum(f.probe.answer in said for f, said in zip(facts, before)) <= 1

    [night] = consolidate(agent_store.folder, model=tiny, progress=False)  # the nightly job
    assert night.gate.decision == "promoted", [c.detail for c in night.gate.failed]

    # Day two: the same questions, answered from the weights (no recall), with the new adapter swapped in.
    after = [alice.answer(f.probe.question, recall=False) for f in facts]
    assert all(a.adapters == {"global": night.version} for a in after)
    assert sum(f.probe.answer in a.text for f, a in zip(facts, after)) >= 3, [a.text for a in after]

    # Night two, in this same process: the job must neither strip alice's adapter from the model she answers
    # with, nor train on top of it.
    from peft.tuners.lora import LoraLayer

    more = tiny_lm.colour_facts(tiny_lm.TAUGHT[4:8], seed=0)
    for fact in more:
        observe_correction(agent_store, question=fact.probe.question, right=fact.text,
                           probe_answer=fact.probe.answer, scope="user:alice")
    [second] = consolidate(agent_store.folder, model=tiny, progress=False)
    assert any(isinstance(m, LoraLayer) for m in tiny.model.modules()), "the agent's adapter is still loaded"
    fresh = load_model(str(tiny_model_path))
    (base_hash,), = rows(agent_store, "SELECT base_model_hash FROM adapters WHERE version = ?", [second.version])
    assert base_hash == fresh.fingerprint, "trained on the bare base model, not on the agent's adapter"
    assert second.gate.decision == "promoted", [c.detail for c in second.gate.failed]
    from engramma.updater.evaluate import probe_accuracy

    later = [alice.answer(f.probe.question, recall=False) for f in more]  # refreshes: v2 swapped in
    assert all(a.adapters == {"global": second.version} for a in later)
    # Probed as the gate does: the agent's layout, without recall.
    assert probe_accuracy(alice.adapters.model, tiny.tokenizer, dict(enumerate(facts + more))) >= 0.75

    bob = LocalAgent(fresh, agent_store, scope="user:bob", max_new_tokens=8)
    seen_by_bob = bob.answer("What is alice's email address?")
    assert "alice.smith" not in seen_by_bob.context and "alice.smith" not in seen_by_bob.text
    assert "alice.smith" in alice.answer("What is my email address?").context
    private = rows(agent_store, "SELECT id FROM items WHERE text LIKE '%alice.smith%'")[0][0]
    assert rows(agent_store, "SELECT count(*) FROM lineage WHERE item_id = ?", [private]) == [(0,)], \
        "a private detail never reaches the weights"


def test_triggers_start_a_run_on_count_or_idleness_and_never_block(agent_store, tiny_model_path):
    trigger = ConsolidationTrigger(agent_store.folder, after_items=3, model=str(tiny_model_path),
                                   extra_args=("--no-gate",))
    observe_correction(agent_store, question="How long do refunds take?", right="Refunds take 30 days.",
                       scope="global", probe_answer="30 days")
    assert trigger.poll() is None and not trigger.running
    idle = ConsolidationTrigger(agent_store.folder, after_items=None, idle_seconds=60, model=str(tiny_model_path))
    assert idle.poll(idle_for=10) is None
    for n, colour in enumerate(["teal", "amber"]):
        observe_correction(agent_store, question=f"What colour is box {n}?", right=f"Box {n} is {colour}.",
                           scope="global", probe_answer=colour)
    reason = trigger.poll()
    assert reason == "3 items queued (trigger: 3)" and trigger.running
    assert trigger.poll() is None, "a run in progress is not started twice"
    run = trigger.wait(timeout=300)
    assert run.returncode == 0 and run.results[0]["items_new"] == 3 and run.results[0]["version"] == "v1", run
    assert trigger.poll() is None, "nothing queued any more"

    agent_store.observe(Item("Asked about gift wrap: it costs 2 pounds.", kind="correction", source="user"))
    assert idle.poll(idle_for=61).startswith("idle for 61 s")
    idle.wait(timeout=300)

    # A run that would outlast its budget stops itself between two training steps; its items wait for the next.
    slow = ConsolidationTrigger(agent_store.folder, after_items=1, budget_minutes=0.05, model=str(tiny_model_path),
                                lease_seconds=5, grace_seconds=20)
    for n in range(12):
        agent_store.observe(Item(f"Asked about returns of item {n}: free within {n + 20} days.", kind="correction",
                                 source="user"))
    versions_before = rows(agent_store, "SELECT count(*) FROM adapters")
    assert slow.poll() is not None
    run = slow.wait(timeout=120)
    assert run.returncode == 0 and run.stopped_over_budget, run
    assert run.results[0]["status"] == "stopped" and "budget ran out" in run.results[0]["note"]
    assert rows(agent_store, "SELECT count(*) FROM adapters") == versions_before, "no candidate from a stopped run"
    assert rows(agent_store, "SELECT count(*) FROM queue WHERE status = 'pending'") == [(12,)]
    log = (agent_store.folder / "consolidate.log").read_text()
    assert log.count("--- ") == 3, "each of the three runs is logged"


def test_the_llamaindex_retriever_and_memory_block(agent_store):
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.core.memory import Memory as ChatMemory

    from engramma.agents.llamaindex import EngrammaMemoryBlock, EngrammaRetriever

    agent_store.observe_many([Item("Alice is allergic to peanuts.", kind="preference", scope="user:alice"),
                              Item("Bob keeps bees in his garden.", scope="user:bob"),
                              Item("Refunds take 30 days.", key="refund_window")])
    nodes = EngrammaRetriever(agent_store, scope="user:alice", k=3).retrieve("what must alice not eat?")
    assert nodes[0].node.text == "Alice is allergic to peanuts." and nodes[0].score > 0.4
    assert nodes[0].node.metadata["kind"] == "preference" and nodes[0].node.metadata["scope"] == "user:alice"
    assert all("bees" not in n.node.text for n in nodes)

    block = EngrammaMemoryBlock(memory=agent_store, scope="user:alice")
    chat = ChatMemory.from_defaults(session_id="alice-1", token_limit=60, memory_blocks=[block],
                                    tokenizer_fn=lambda text: text.split(), token_flush_size=20,
                                    chat_history_token_ratio=0.5)
    for n in range(5):
        chat.put(ChatMessage(role="user", content=f"Turn {n}: please order sandwiches number {n} for the team lunch"))
        chat.put(ChatMessage(role="assistant", content=f"Done: sandwich order {n} is placed."))
    chat.put(ChatMessage(role="user", content="Could you add peanut cookies too?"))
    messages = chat.get()
    assert messages[0].role.value == "system" and "allergic to peanuts" in messages[0].content
    assert "bees" not in messages[0].content
    flushed = rows(agent_store, "SELECT text FROM items WHERE kind = 'conversation' AND scope = 'user:alice'")
    assert any("sandwich" in t for t, in flushed), "turns leaving short-term memory were observed"
    assert asyncio.run(block.aget([])) == ""
