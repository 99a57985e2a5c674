"""The fast memory on a support agent's week: ingest, recall with paraphrases, scope isolation, forget, stats.

    python examples/fast_memory_demo.py [--store PATH] [--days N]

Runs offline on the bundled MiniLM embedder, routed by the default policy preset: secrets and repeats are
dropped, private details stay in their user's index, a new value of a keyed fact supersedes the old one.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support_stream import QUESTIONS, START, USER_DETAILS, stream  # noqa: E402

from engramma import Memory  # noqa: E402

console = Console()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="store folder (default: a fresh temporary one)")
    parser.add_argument("--days", type=int, default=5, help="simulated days of traffic (default 5)")
    args = parser.parse_args()
    folder = args.store or Path(tempfile.mkdtemp(prefix="engramma-demo-")) / "store"

    console.rule("[bold]engramma: the fast memory of a support agent")
    started = time.perf_counter()
    with console.status("loading the embedder (MiniLM, offline)..."):
        mem = Memory.open(folder)
        mem.embedder.embed(["warm up"])

    days = Table(title=f"Ingest, day by day (policy {mem.policy.name})", title_justify="left")
    for column in ("day", "items", "index", "both", "train", "drop", "top rules", "items/s"):
        days.add_column(column, justify="right" if column != "top rules" else "left")
    for day, items in stream(args.days):
        t = time.perf_counter()
        records = mem.observe_many(items)
        rate = len(records) / (time.perf_counter() - t)
        routes = Counter(r.route for r in records)
        rules = ", ".join(f"{rule} {n}" for rule, n in Counter(r.rule for r in records).most_common(3))
        days.add_row(str(day + 1), str(len(records)), *(str(routes[r]) for r in ("index", "both", "train", "drop")),
                     rules, f"{rate:.0f}")
    console.print(days)

    answers = Table(title="Recall with paraphrased questions (current values only)", title_justify="left")
    for column in ("question", "asked as", "best answer", "cos", "ok"):
        answers.add_column(column)
    correct = 0
    for question, scope, expected in QUESTIONS:
        hits = mem.recall(question, k=3, scope=scope)
        top = hits[0] if hits else None
        ok = top is not None and expected.lower() in top.text.lower()
        correct += ok
        answers.add_row(question, scope, top.text if top else "-", f"{top.score:.2f}" if top else "-",
                        "[green]yes" if ok else "[red]no")
    console.print(answers)
    console.print(f"recall hit rate: [bold]{correct}/{len(QUESTIONS)}[/]\n")

    leaks = [h for h in mem.recall("phone number and order of the customer", k=20, scope="user:alice")
             if h.item.scope == "user:bob"]
    console.print(f"scope isolation: alice's recall saw {len(leaks)} of bob's {len(USER_DETAILS['user:bob'])} "
                  "private details (must be 0)")

    forgotten = mem.forget(scope="user:alice")
    after = mem.recall("How should we reach her?", k=5, scope="user:alice")
    console.print(f"forget(scope='user:alice'): {forgotten} items erased; her contact detail now recalled: "
                  f"{any('alice@' in h.text for h in after)}")

    refund = mem.recall(QUESTIONS[0][0], k=1, as_of=START + timedelta(days=1))[0].text
    console.print(f"as_of day 2, the refund rule was: {refund!r}")

    s = mem.stats()
    table = Table(title="Store", title_justify="left", show_header=False)
    table.add_row("items kept", str(s.items))
    table.add_row("indexed", str(s.indexed))
    table.add_row("forgotten", str(s.forgotten))
    table.add_row("events", str(s.events))
    table.add_row("by kind", ", ".join(f"{k} {v}" for k, v in s.by_kind.items()))
    table.add_row("by route", ", ".join(f"{k} {v}" for k, v in s.by_route.items()))
    table.add_row("disk", f"{s.disk_bytes / 1e6:.1f} MB")
    console.print(table)
    mem.close()

    shutil.rmtree(folder / "index")  # the index is a view: deleting it costs a rebuild, never data
    with Memory.open(folder) as mem:
        same = mem.recall(QUESTIONS[0][0], k=1)[0].text
        console.print(f"index deleted and rebuilt from DuckDB on reopen: {len(mem.view)} vectors, "
                      f"consistent: {mem.check() == []}, first answer still: {same!r}")
    console.print(f"\nstore: {folder}   ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
