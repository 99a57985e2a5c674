"""A support agent's week with engramma: it remembers, learns overnight, keeps users apart, and forgets nothing
it should keep.

    python examples/support_agent_demo.py [--days 5] [--quick] [--store PATH] [--report DIR] [--policy YAML]

Each day a scripted stream reaches the agent: product facts that change (the refund window moves from 30 to
45 days on day 2), two users' private details, the team lead's corrections (product answers, and a reply
rewritten in the house style: a sentence or two, ending "Kind regards, the Kettle team."), duplicates and
chatter. The policy routes each item; recall answers paraphrased questions at once. Each night the
consolidation job trains a LoRA adapter on the day's corrections with retrieval-selected replay of earlier
days, and the gate promotes it only if it learned them without forgetting. Whether the house style was
internalised, and not only the taught replies, is measured on questions no correction answers. Each day ends
with its row of the table; the week ends with the whole table, a privacy check and an HTML report. Runs
offline on the bundled SmolLM2-135M-Instruct and MiniLM; --quick is a two-day version (the refund
change included).
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from support_stream import (PRODUCT_ANSWERS, PRODUCT_FACTS, SIGN_OFF, UNSEEN_QUESTIONS, USER_DETAILS,  # noqa: E402
                            stream)

from engramma import Memory  # noqa: E402
from engramma.agents import LocalAgent  # noqa: E402
from engramma.memory.store import open_existing  # noqa: E402
from engramma.updater.audit import privacy_summary  # noqa: E402
from engramma.updater import consolidate, load_model  # noqa: E402
from engramma.updater.dataset import normalise  # noqa: E402
from engramma.updater.report import write_report  # noqa: E402

console = Console(width=max(120, Console().width))

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
COLUMNS = ("day", "items", "index", "both", "drop", "recall", "refund", "taught", "learned", "style", "kept", "BWT",
           "adapter")
LEGEND = ("index/both/drop: how the policy routed the day's items (both: indexed and queued for tonight); "
          "recall: paraphrased questions whose best recalled item is the current right one; refund: the window "
          "that item gives; taught: corrections trained as new tonight; learned: share of their probes the "
          "candidate answers; style: questions never taught that the agent answers from its weights alone in "
          "the house style, after the night; kept: earlier nights' probes the candidate still answers; BWT: "
          "backward transfer (0: nothing forgotten); adapter: the gate's verdict")
# Items that a user's privacy depends on: what a user said, or anything the PII detector flagged.


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


def refund_window(mem: Memory) -> str:
    """The refund window as the best recalled item for the paraphrased refund question gives it."""
    top = mem.recall(FACT_QUESTIONS["refund_window"], k=1)
    found = re.search(r"\d+ days", top[0].text) if top else None
    return found.group(0) if found else "-"


def from_weights(agent: LocalAgent, questions: list[str]) -> list[str]:
    """The agent's answers with nothing recalled: its active adapters alone."""
    return [a.text for a in agent.answer_many(questions, recall=False)]


def in_house_style(answer: str) -> bool:
    """The house style: a short answer that ends with the sign-off, said once. Matched on normalised words, as
    the gate matches a probe; an answer too long to reach its sign-off within the agent's token budget fails."""
    text, sign_off = f" {normalise(answer)}", f" {normalise(SIGN_OFF)}"
    return text.endswith(sign_off) and text.count(sign_off) == 1 and len(text) > len(sign_off)


def style_score(answers: list[str]) -> str:
    return f"{sum(map(in_house_style, answers))}/{len(answers)}"


def said(text: str) -> str:
    """A model's answer, quoted, its brackets shown as they are (not read as rich markup)."""
    return escape(repr(text))


def pct(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def day_table(title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "adapter" else "right", no_wrap=True)
    return table


def privacy(mem: Memory) -> dict[str, int]:
    with mem.store.transaction() as con:
        return privacy_summary(con)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--days", type=int, default=5, help="simulated days (default 5)")
    parser.add_argument("--quick", action="store_true",
                        help="two days, the refund change included (about 5 minutes on 2 cores)")
    parser.add_argument("--store", type=Path, help="store folder (default: a fresh temporary one)")
    parser.add_argument("--report", type=Path, help="folder for the HTML report (default: next to the store)")
    parser.add_argument("--policy", type=Path, default=HERE / "support_policy.yaml",
                        help="policy file (default: examples/support_policy.yaml)")
    parser.add_argument("--model", default=None, help="base model (default: the policy's, SmolLM2-135M-Instruct)")
    args = parser.parse_args()
    days = 2 if args.quick else args.days
    if days < 1:
        parser.error("--days: at least one day")
    folder = args.store or Path(tempfile.mkdtemp(prefix="engramma-demo-")) / "store"
    report_dir = args.report or folder.parent / "report"

    console.rule("[bold]engramma: a support agent's week")
    started = time.perf_counter()
    with console.status("loading MiniLM and SmolLM2-135M-Instruct (offline; converted once to a cached folder)..."):
        mem = Memory.open(folder, policy=args.policy)
        mem.embedder.embed(["warm up"])
        lm = load_model(args.model or mem.policy.spec.model.name)
    agent = LocalAgent(lm, mem, scope="user:alice", max_new_tokens=48)
    console.print(f"policy [bold]{mem.policy.name}[/] ({args.policy.name}), model {lm.model_id}, store {folder}\n")

    summary = day_table("Day by day")
    # Asked from the weights alone before training and after each night, in one batch: the first correction
    # taught, then the questions no correction answers (the style column).
    demo_question = PRODUCT_ANSWERS[0][0][0]
    questions = [demo_question, *UNSEEN_QUESTIONS]
    for day, items in stream(days):
        records = mem.observe_many(items)
        routes = Counter(r.route for r in records)
        hits, asked = recall_hit_rate(mem, day)
        refund = refund_window(mem)
        if day == 0:
            before, *unseen = from_weights(agent, questions)
            console.print(f"day 1, before any training, from the weights alone:\n  [italic]{demo_question}[/] → "
                          f"{said(before)}\n  questions never taught, answered in the house style: "
                          f"{style_score(unseen)}\n")

        console.print(f"[bold]night {day + 1}[/]: consolidating {mem.stats().queued} queued item(s)")
        night = time.perf_counter()
        results = consolidate(folder, model=lm, progress=True)
        decision, gate, taught = "none queued", {}, 0
        for result in results:
            if result.gate is None:
                continue
            gate, taught = result.gate.metrics.to_dict(), taught + result.items_new
            decision = f"{result.version} {result.gate.decision}"
            for check in result.gate.checks:
                mark = "[green]pass[/]" if check.passed else "[red]FAIL[/]"
                console.print(f"  {mark} {check.name}: {check.detail}")
            console.print(f"  {result.version}: {result.items_new} new + {result.items_replayed} replayed, "
                          f"{result.report.steps} steps, {result.report.tokens_per_s:,.0f} tokens/s, "
                          f"padding {result.report.padding_waste:.0%} → [bold]{result.gate.decision}[/] "
                          f"({time.perf_counter() - night:.0f} s)")
        after, *unseen = from_weights(agent, questions)
        sample = day % len(UNSEEN_QUESTIONS)
        console.print(f"  never taught, from the weights alone: [italic]{UNSEEN_QUESTIONS[sample]}[/] → "
                      f"{said(unseen[sample])}")
        row = (str(day + 1), str(len(records)), str(routes["index"]), str(routes["both"]), str(routes["drop"]),
               f"{hits}/{asked}", refund, str(taught), pct(gate.get("new_accuracy")), style_score(unseen),
               pct(gate.get("retention")), "-" if gate.get("bwt") is None else f"{gate['bwt']:+.2f}", decision)
        today = day_table()
        today.add_row(*row)
        console.print(today)
        summary.add_row(*row)
        console.print()

    console.print(summary)
    console.print(LEGEND)
    console.print(f"\nafter {days} night(s), from the weights alone (adapters {agent.adapters.versions}):\n"
                  f"  taught on day 1: [italic]{demo_question}[/] → {said(after)}\n"
                  f"  never taught:    [italic]{UNSEEN_QUESTIONS[0]}[/] → {said(unseen[0])}")
    with_recall = agent.answer("How many days do I have to send my kettle back for a refund?")
    recalled = with_recall.context.splitlines()[1].removeprefix("- ") if with_recall.context else "-"
    console.print(f"alice asks how many days she has to send her kettle back; recalled first: {escape(recalled)}\n"
                  f"  and {lm.model_id} answered with it in context: {said(with_recall.text)}")
    private = privacy(mem)
    leak = [h for h in mem.recall("phone number and order of the customer", k=20, scope="user:alice")
            if h.item.scope == "user:bob"]
    console.print(f"\n[bold]privacy[/]: of {private['observed']} items with personal data or from a user's scope, "
                  f"{private['queued']} were queued for training and {private['trained']} are in any adapter's "
                  f"lineage (both must be 0); alice's recall saw {len(leak)} of bob's items")
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
