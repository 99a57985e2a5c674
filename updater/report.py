"""`engramma report STORE --out DIR`: one HTML page with PNG figures of how the memory learned over time:
the accuracy matrix across rounds, retention per round, backward transfer over time, the routing mix over
time, the adapter lineage and the gate's outcomes. Everything is read from the store; nothing is recomputed.
"""
from __future__ import annotations

import html
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from engramma.memory.store import Store
from engramma.updater import registry
from engramma.updater.registry import AdapterVersion

STATUS_COLOURS = {"active": "#2b8a3e", "retired": "#868e96", "rejected": "#c92a2a", "candidate": "#1971c2"}
ROUTE_COLOURS = {"index": "#1971c2", "both": "#7048e8", "train": "#e8590c", "drop": "#adb5bd"}


@dataclass(frozen=True, slots=True)
class Figure:
    file: str
    title: str
    caption: str


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False,
                         "axes.titleweight": "bold", "font.size": 10})
    return plt


def _version_number(version: str) -> int:
    return int(version[1:]) if version[1:].isdigit() else 0


def write_report(store: Store, out: Path) -> Path:
    """Write `out/index.html` and its figures; returns the page's path."""
    out.mkdir(parents=True, exist_ok=True)
    with store.transaction() as con:
        versions = registry.versions(con, store.folder)
        matrix = con.execute(
            "SELECT evaluated, task, avg(CAST(correct AS INTEGER)), count(*) FROM probe_results "
            "WHERE correct IS NOT NULL AND task IS NOT NULL GROUP BY ALL").fetchall()
        routing = con.execute(
            "SELECT CAST(ts AS DATE) AS day, route, count(*) FROM items GROUP BY ALL ORDER BY day").fetchall()
        counts = dict(con.execute("SELECT status, count(*) FROM items GROUP BY ALL").fetchall())
    plt = _plt()
    figures = [
        _accuracy_matrix(plt, matrix, versions, out),
        _retention(plt, versions, out),
        _bwt(plt, versions, out),
        _routing(plt, routing, out),
        _lineage(plt, versions, out),
        _gate(plt, versions, out),
    ]
    page = out / "index.html"
    page.write_text(_html(store, versions, counts, figures), encoding="utf-8")
    return page


def _save(plt, fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name)
    plt.close(fig)
    return name


def _empty(plt, out: Path, name: str, message: str) -> str:
    fig, ax = plt.subplots(figsize=(7, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", color="#495057")
    return _save(plt, fig, out, name)


def _accuracy_matrix(plt, matrix, versions, out) -> Figure:
    title = "Accuracy matrix across rounds"
    caption = ("Row: the adapter evaluated. Column: the round whose new items are probed. The diagonal is what each "
               "round learned; to its left, what later adapters kept of earlier rounds.")
    known = {v.version for v in versions}
    rounds = sorted({t for _, t, _, _ in matrix if t in known} | {e for e, _, _, _ in matrix if e in known},
                    key=_version_number)
    if not rounds:
        return Figure(_empty(plt, out, "accuracy_matrix.png", "no evaluations yet: run engramma consolidate"),
                      title, caption)
    import numpy as np

    grid = np.full((len(rounds), len(rounds)), np.nan)
    for evaluated, task, accuracy, _ in matrix:
        if evaluated in rounds and task in rounds:
            grid[rounds.index(evaluated), rounds.index(task)] = accuracy
    size = max(4.0, 0.6 * len(rounds) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    for r in range(len(rounds)):
        for c in range(len(rounds)):
            if not np.isnan(grid[r, c]):
                ax.text(c, r, f"{grid[r, c]:.2f}", ha="center", va="center",
                        color="white" if grid[r, c] < 0.6 else "black", fontsize=8)
    ax.set_xticks(range(len(rounds)), rounds, rotation=45)
    ax.set_yticks(range(len(rounds)), rounds)
    ax.set_xlabel("round whose items are probed")
    ax.set_ylabel("adapter evaluated")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="probe accuracy", shrink=0.8)
    return Figure(_save(plt, fig, out, "accuracy_matrix.png"), title, caption)


def _gated(versions: list[AdapterVersion]) -> list[AdapterVersion]:
    return [v for v in versions if v.metrics.get("gate")]


def _retention(plt, versions, out) -> Figure:
    title = "New and retained knowledge per round"
    caption = ("For each gated version: accuracy on its own new items, and on earlier rounds' items, against the "
               "parent it would replace (dashed).")
    gated = _gated(versions)
    if not gated:
        return Figure(_empty(plt, out, "retention.png", "no gated versions yet"), title, caption)
    names = [v.version for v in gated]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names) + 3), 3.6))
    x = range(len(names))

    def series(key):
        return [v.metrics.get(key) if v.metrics.get(key) is not None else float("nan") for v in gated]

    ax.plot(x, series("new_accuracy"), "o-", color="#1971c2", label="new items")
    ax.plot(x, series("retention"), "s-", color="#2b8a3e", label="earlier rounds")
    ax.plot(x, series("parent_retention"), "s--", color="#2b8a3e", alpha=0.5, label="earlier rounds, parent")
    for n, v in enumerate(gated):
        ax.annotate("✓" if v.metrics["gate"]["passed"] else "✗", (n, 1.04), ha="center",
                    color="#2b8a3e" if v.metrics["gate"]["passed"] else "#c92a2a", annotation_clip=False)
    ax.set_xticks(list(x), names)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("probe accuracy")
    ax.set_title(title, pad=16)
    ax.legend(loc="lower left", frameon=False, fontsize=8)
    return Figure(_save(plt, fig, out, "retention.png"), title, caption)


def _bwt(plt, versions, out) -> Figure:
    title = "Backward transfer over time"
    caption = ("BWT: mean change of accuracy on earlier rounds since each was learned (0 is no forgetting, "
               "negative is forgetting). Bars: the largest drop of any earlier round.")
    points = [v for v in _gated(versions) if v.metrics.get("bwt") is not None]
    if not points:
        return Figure(_empty(plt, out, "bwt.png", "BWT needs two gated rounds in one chain"), title, caption)
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(points) + 3), 3.2))
    x = list(range(len(points)))
    ax.bar(x, [-(v.metrics.get("max_forgetting") or 0) for v in points], color="#ffa8a8", label="largest drop (−)")
    ax.plot(x, [v.metrics["bwt"] for v in points], "o-", color="#c92a2a", label="BWT")
    ax.axhline(0, color="#495057", linewidth=0.8)
    ax.set_xticks(x, [v.version for v in points])
    ax.set_ylabel("accuracy change")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    return Figure(_save(plt, fig, out, "bwt.png"), title, caption)


def _routing(plt, routing, out) -> Figure:
    title = "Routing mix over time"
    caption = "Items observed per day, by the route the policy chose (drop: only the hash and the reason kept)."
    if not routing:
        return Figure(_empty(plt, out, "routing.png", "no items observed yet"), title, caption)
    days = sorted({d for d, _, _ in routing})
    by = defaultdict(dict)
    for day, route, n in routing:
        by[route][day] = n
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(days) + 3), 3.4))
    bottom = [0] * len(days)
    for route in ("index", "both", "train", "drop"):
        values = [by[route].get(d, 0) for d in days]
        if any(values):
            ax.bar(range(len(days)), values, bottom=bottom, color=ROUTE_COLOURS[route], label=route)
            bottom = [b + v for b, v in zip(bottom, values)]
    step = max(1, len(days) // 12)
    ax.set_xticks(range(0, len(days), step), [str(days[n]) for n in range(0, len(days), step)], rotation=30)
    ax.set_ylabel("items")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8, ncol=4)
    return Figure(_save(plt, fig, out, "routing.png"), title, caption)


def _lineage(plt, versions, out) -> Figure:
    title = "Adapter lineage"
    caption = ("Each version, by train scope, linked to its parent; colour is its status, a red ring marks a version "
               "tainted by a forgotten item, a diamond a merge.")
    if not versions:
        return Figure(_empty(plt, out, "lineage.png", "no adapters yet"), title, caption)
    scopes = sorted({v.train_scope for v in versions}, key=lambda s: (s != "global", s))
    at = {v.version: (n, scopes.index(v.train_scope)) for n, v in enumerate(versions)}
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(versions) + 2), 1.2 + 0.9 * len(scopes)))
    for v in versions:
        x, y = at[v.version]
        sources = v.config.get("merged_from") or ([v.parent] if v.parent else [])
        for source in sources:
            if source in at:
                ax.annotate("", xy=(x, y), xytext=at[source], arrowprops={"arrowstyle": "->", "color": "#adb5bd"})
        ax.scatter([x], [y], s=260, marker="D" if v.config.get("merged_from") else "o",
                   color=STATUS_COLOURS[v.status.value], edgecolors="#e03131" if v.tainted else "white",
                   linewidths=2.5 if v.tainted else 1, zorder=3)
        ax.text(x, y - 0.32, v.version, ha="center", va="top", fontsize=8)
    for status, colour in STATUS_COLOURS.items():
        ax.scatter([], [], color=colour, label=status)
    ax.set_yticks(range(len(scopes)), scopes)
    ax.set_xticks([])
    ax.set_ylim(-0.8, len(scopes) - 0.3)
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8, ncol=4, loc="upper left", bbox_to_anchor=(0, -0.02))
    return Figure(_save(plt, fig, out, "lineage.png"), title, caption)


def _gate(plt, versions, out) -> Figure:
    title = "Gate outcomes"
    caption = ("Each check of each gated version as a share of its threshold (below 1 passes for limits, above 1 "
               "for minimums); red marks a failed check.")
    gated = _gated(versions)
    if not gated:
        return Figure(_empty(plt, out, "gate.png", "no gated versions yet"), title, caption)
    checks = sorted({c["name"] for v in gated for c in v.metrics["gate"]["checks"]})
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(gated) + 3), 1.0 + 0.45 * len(checks)))
    for x, v in enumerate(gated):
        for c in v.metrics["gate"]["checks"]:
            y = checks.index(c["name"])
            colour = "#2b8a3e" if c["passed"] else "#c92a2a"
            value = c["value"]
            if value is None:
                label = "—"
            elif c["name"] == "items":
                label = f"{value:.0f}"
            else:
                label = f"{value:.0%}" if abs(value) <= 1.5 else f"{value:.2f}"
            ax.scatter([x], [y], s=420, color=colour, alpha=0.85)
            ax.text(x, y, label, ha="center", va="center", color="white", fontsize=7)
    ax.set_xticks(range(len(gated)), [v.version for v in gated])
    ax.set_yticks(range(len(checks)), checks)
    ax.set_xlim(-0.7, len(gated) - 0.3)
    ax.set_ylim(-0.7, len(checks) - 0.3)
    ax.set_title(title)
    return Figure(_save(plt, fig, out, "gate.png"), title, caption)


def _html(store: Store, versions: list[AdapterVersion], counts: dict, figures: list[Figure]) -> str:
    rows = []
    for v in reversed(versions):
        gate = v.metrics.get("gate")
        verdict = "—" if not gate else ("passed" if gate["passed"] else "failed: " + "; ".join(
            c["detail"] for c in gate["checks"] if not c["passed"]))
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in (
            v.version, v.train_scope, v.status.value + (" (tainted)" if v.tainted else ""), v.parent or "—",
            f"{v.items_new} + {v.items_replayed}", f"{v.metrics.get('new_accuracy', float('nan')):.0%}"
            if v.metrics.get("new_accuracy") is not None else "—",
            f"{v.metrics['retention']:.0%}" if v.metrics.get("retention") is not None else "—",
            verdict, v.created_at.strftime("%Y-%m-%d %H:%M"))) + "</tr>")
    sections = "\n".join(
        f'<section><h2>{html.escape(f.title)}</h2><p>{html.escape(f.caption)}</p>'
        f'<img src="{f.file}" alt="{html.escape(f.title)}"></section>' for f in figures)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no items"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>engramma report: {html.escape(store.folder.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2rem auto; padding: 0 1rem; color: #212529; }}
h1 {{ margin-bottom: 0.2rem; }} .sub {{ color: #495057; margin-top: 0; }}
section {{ margin: 2rem 0; }} img {{ max-width: 100%; border: 1px solid #e9ecef; border-radius: 6px; }}
table {{ border-collapse: collapse; width: 100%; font-size: 0.9rem; }}
td, th {{ border-bottom: 1px solid #e9ecef; padding: 0.35rem 0.5rem; text-align: left; vertical-align: top; }}
th {{ background: #f8f9fa; }}
</style></head><body>
<h1>engramma report</h1>
<p class="sub">Store <code>{html.escape(str(store.folder))}</code>: items {html.escape(summary)};
{len(versions)} adapter version(s).</p>
<section><h2>Adapter versions</h2><table>
<tr><th>version</th><th>scope</th><th>status</th><th>parent</th><th>items new + replayed</th><th>new accuracy</th>
<th>retention</th><th>gate</th><th>created</th></tr>
{''.join(rows) or '<tr><td colspan="9">none yet</td></tr>'}
</table></section>
{sections}
</body></html>
"""
