"""The fast memory on a support agent's week: ingest, recall with paraphrases, scope isolation, forget, stats.

    python examples/fast_memory_demo.py [--store PATH] [--days N]

Runs offline on the bundled MiniLM embedder. Until the policy engine lands every item routes to the index;
for a keyed fact whose value changed, the demo reads the newest value among the hits.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support_stream import QUESTIONS, USER_DETAILS, stream  # noqa: E402

from engramma import Memory  # noqa: E402

console = Console()


def newest_per_key(hits):
    """Among hits for the same keyed fact, keep the latest value: the agent's reading of a changed fact."""
    best = {}
    for hit in hits:
        slot = hit.item.key or f"#{hit.id}"
        if slot not in best or hit.item.ts > best[slot].item.ts:
            best[slot] = hit
    return sorted(best.values(), key=lambda h: -h.score)


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

    days = Table(title="Ingest, day by day", title_justify="left")
    for column in ("day", "items", "product facts", "user details", "chatter", "items/s"):
        days.add_column(column, justify="right")
    for day, items in stream(args.days):
        t = time.perf_counter()
        records = mem.observe_many(items)
        rate = len(records) / (time.perf_counter() - t)
        kinds = [r.item.scope.split(":")[0] for r in records]
        days.add_row(str(day + 1), str(len(records)), str(kinds.count("global")), str(kinds.count("user")),
                     str(kinds.count("session")), f"{rate:.0f}")
    console.print(days)

    answers = Table(title="Recall with paraphrased questions (k=8, newest value per key)", title_justify="left")
    for column in ("question", "asked as", "best answer", "cos", "ok"):
        answers.add_column(column)
    correct = 0
    for question, scope, expected in QUESTIONS:
        hits = newest_per_key(mem.recall(question, k=8, scope=scope))
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
        same = newest_per_key(mem.recall(QUESTIONS[0][0], k=8))[0].text
        console.print(f"index deleted and rebuilt from DuckDB on reopen: {len(mem.view)} vectors, "
                      f"consistent: {mem.check() == []}, first answer still: {same!r}")
    console.print(f"\nstore: {folder}   ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
