"""A support agent's week with engramma: it remembers, learns overnight, keeps users apart, and forgets nothing
it should keep.

    python examples/support_agent_demo.py [--days 5] [--quick] [--store PATH] [--report DIR]

Each day a scripted stream reaches the agent: product facts that change (the refund window moves from 30 to
45 days), two users' private details, the team lead's recurring corrections (how to answer, how to sign off),
duplicates and chatter. The policy routes each item; recall answers paraphrased questions at once. Each night
the consolidation job trains a LoRA adapter on the day's corrections with retrieval-selected replay of earlier
days, and the gate promotes it only if it learned them without forgetting. Runs offline on the bundled
SmolLM2-135M-Instruct and MiniLM; --quick is a two-day version for CI.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from support_stream import (BEHAVIOUR, PRODUCT_FACTS, START, USER_DETAILS, behaviour_items,  # noqa: E402
                            stream)

from engramma import Memory  # noqa: E402
from engramma.agents import LocalAgent  # noqa: E402
from engramma.memory.store import open_existing  # noqa: E402
from engramma.updater import consolidate, load_model  # noqa: E402
from engramma.updater.report import write_report  # noqa: E402

console = Console(width=max(110, Console().width))

# Paraphrased questions about product facts: the key whose current value answers them.
FACT_QUESTIONS = {
    "refund_window": "How long does someone have to send an item back?",
    "shipping_fee": "How much is standard postage?",
    "support_hours": "When can people phone the helpdesk?",
    "warranty": "Is there a guarantee if the kettle breaks?",
    "exchange": "Can I swap my purchase for another colour?",
    "express": "How fast is the quickest delivery option?",
}
USER_QUESTIONS = [("Which metal should we avoid for this customer?", "user:alice", "nickel"),
                  ("How should we reach her?", "user:alice", "email"),
                  ("Where is his package?", "user:bob", "in transit"),
                  ("How does he want to be contacted?", "user:bob", "phone calls")]


def recall_hit_rate(mem: Memory, day: int) -> tuple[int, int]:
    """Paraphrased questions whose best recalled item is the right one, as of `day`."""
    asked = hits = 0
    for key, question in FACT_QUESTIONS.items():
        versions = PRODUCT_FACTS[key]
        since = max((d for d in versions if d <= day), default=None)
        if since is None:
            continue
        asked += 1
        top = mem.recall(question, k=1)
        hits += bool(top) and top[0].text == versions[since]
    for question, scope, expected in USER_QUESTIONS:
        details = USER_DETAILS[scope][: 1 + day]
        if not any(expected in d for d in details):
            continue
        asked += 1
        top = mem.recall(question, k=1, scope=scope)
        hits += bool(top) and expected in top[0].text
    return hits, asked


def pct(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=5, help="simulated days (default 5)")
    parser.add_argument("--quick", action="store_true", help="two days: the CI form (under 3 minutes)")
    parser.add_argument("--store", type=Path, help="store folder (default: a fresh temporary one)")
    parser.add_argument("--report", type=Path, help="folder for the HTML report (default: next to the store)")
    parser.add_argument("--model", default=None, help="base model (default: the policy's, SmolLM2-135M-Instruct)")
    args = parser.parse_args()
    days = 2 if args.quick else args.days
    folder = args.store or Path(tempfile.mkdtemp(prefix="engramma-demo-")) / "store"
    report_dir = args.report or folder.parent / "report"
    policy = HERE / "support_policy.yaml"

    console.rule("[bold]engramma: a support agent's week")
    started = time.perf_counter()
    with console.status("loading MiniLM and SmolLM2-135M-Instruct (offline; converted once to a cached folder)..."):
        mem = Memory.open(folder, policy=policy)
        mem.embedder.embed(["warm up"])
        lm = load_model(args.model or mem.policy.spec.model.name)
    agent = LocalAgent(lm, mem, scope="user:alice", max_new_tokens=40)
    console.print(f"policy [bold]{mem.policy.name}[/] ({policy.name}), model {lm.model_id}, store {folder}\n")

    summary = Table(title="Day by day", title_justify="left")
    for column in ("day", "items", "index", "both", "drop", "recall", "taught", "learned", "kept", "BWT", "adapter"):
        summary.add_column(column, justify="left" if column == "adapter" else "right", no_wrap=True)
    demo_question = BEHAVIOUR[0][0][0]
    for day, items in stream(days):
        taught = behaviour_items(day, START + timedelta(days=day), random.Random(day))
        items = sorted(items + taught, key=lambda item: item.ts)
        records = mem.observe_many(items)
        routes = Counter(r.route for r in records)
        hits, asked = recall_hit_rate(mem, day)
        if day == 0:
            before = agent.answer(demo_question, recall=False)
            console.print(f"day 1, before any training, asked [italic]{demo_question}[/]\n  → {before.text!r}\n")

        console.print(f"[bold]night {day + 1}[/]: consolidating {mem.stats().queued} queued item(s)")
        results = consolidate(folder, model=lm, progress=True)
        decision = "nothing to train"
        gate = {}
        for result in results:
            if result.gate is not None:
                gate = result.gate.metrics
                decision = f"{result.version} {result.gate.decision}"
                for check in result.gate.checks:
                    mark = "[green]pass[/]" if check.passed else "[red]FAIL[/]"
                    console.print(f"  {mark} {check.name}: {check.detail}")
                console.print(f"  {result.version}: {result.items_new} new + {result.items_replayed} replayed, "
                              f"{result.report.steps} steps, {result.report.tokens_per_s:,.0f} tokens/s, "
                              f"padding {result.report.padding_waste:.0%} → [bold]{result.gate.decision}[/]")
        summary.add_row(str(day + 1), str(len(records)), str(routes["index"]), str(routes["both"]),
                        str(routes["drop"]), f"{hits}/{asked}", str(len(BEHAVIOUR.get(day, []))),
                        pct(gate.get("new_accuracy")), pct(gate.get("retention")),
                        "-" if gate.get("bwt") is None else f"{gate['bwt']:+.2f}", decision)
        console.print()

    console.print(summary)
    console.print("recall: paraphrased questions answered by the best recalled item (current values only); "
                  "taught: corrections that day; learned: share of them the new adapter answers; kept: earlier "
                  "days' corrections it still answers; BWT: backward transfer (0: nothing forgotten)")
    after = agent.answer(demo_question, recall=False)
    console.print(f"\nafter {days} night(s), from the weights alone (adapters {after.adapters}):\n"
                  f"  [italic]{demo_question}[/] → {after.text!r}")
    with_recall = agent.answer("How long do I have to return my kettle?")
    console.print(f"alice asks how long she has to return her kettle; recalled first: "
                  f"{with_recall.context.splitlines()[1] if with_recall.context else '-'}\n"
                  f"  and {lm.model_id} answered with it in context: {with_recall.text!r}")
    leak = [h for h in mem.recall("phone number and order of the customer", k=20, scope="user:alice")
            if h.item.scope == "user:bob"]
    with mem.store.transaction() as con:
        private_trained = con.execute(
            "SELECT count(*) FROM lineage l JOIN items i ON i.id = l.item_id WHERE i.scope LIKE 'user:%' "
            "OR json_array_length(json_extract(i.signals, '$.pii')) > 0").fetchall()[0][0]
    console.print(f"private details: alice's recall saw {len(leak)} of bob's; items with personal data in any "
                  f"adapter's lineage: {private_trained} (both must be 0)")
    mem.close()

    store = open_existing(folder)
    try:
        page = write_report(store, report_dir)
    finally:
        store.close()
    console.print(f"\nreport: [bold]{page}[/]")
    console.print(f"store:  {folder}   ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
