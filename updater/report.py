"""`engramma report STORE --out DIR`: one HTML page with PNG figures of how the memory learned over time:
the accuracy matrix across rounds, retention per round, backward transfer over time, the routing mix over
time, the adapter lineage and the gate's outcomes. Everything is read from the store; nothing is recomputed.
"""
from __future__ import annotations

import html
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from engramma.memory import items as item_rows
from engramma.memory.store import Store
from engramma.updater import registry
from engramma.updater.gate import CheckName
from engramma.updater.measure import accuracy_matrix
from engramma.updater.registry import AdapterStatus, AdapterVersion

STATUS_COLOURS = {"active": "#2b8a3e", "retired": "#868e96", "rejected": "#c92a2a", "candidate": "#1971c2"}
ROUTE_COLOURS = {"index": "#1971c2", "both": "#7048e8", "train": "#e8590c", "drop": "#adb5bd"}
PASSED, FAILED, MUTED, TAINT = "#2b8a3e", "#c92a2a", "#868e96", "#212529"
MAX_BINS = 60  # the routing chart's time unit is the finest that keeps it under this many bars


@dataclass(frozen=True, slots=True)
class Figure:
    file: str
    title: str
    caption: str


@dataclass(frozen=True, slots=True)
class CheckLook:
    """How the gate figure shows one kind of check: min passes at or above its threshold, above only over it,
    max at or below it; flag is a yes/no check with no scale."""
    label: str
    bound: Literal["min", "above", "max", "flag"]
    unit: Literal["count", "share", "points", "change", "logprob", "raw"]


# One look per check `gate.judge` makes, in its order (a test holds them to `CheckName`). A name read from a
# registry written by another engramma version, and unknown here, is still drawn, on a raw scale.
CHECK_LOOKS: dict[CheckName, CheckLook] = {
    CheckName.ITEMS: CheckLook("New items in the round", "min", "count"),
    CheckName.NEW_ACCURACY: CheckLook("New items: probe accuracy", "min", "share"),
    CheckName.NEW_HELDOUT_ACCURACY: CheckLook("New items: accuracy on held-out wordings", "min", "share"),
    CheckName.NEW_LIKELIHOOD: CheckLook("New items: log-probability gain over the parent", "above", "logprob"),
    CheckName.RETENTION_DROP: CheckLook("Earlier rounds: accuracy drop vs the parent", "max", "points"),
    CheckName.RETENTION_HELDOUT_DROP: CheckLook("Earlier rounds: held-out accuracy drop vs the parent", "max",
                                                "points"),
    CheckName.RETENTION_PERPLEXITY_INCREASE: CheckLook("Earlier rounds without probes: perplexity change", "max",
                                                       "change"),
    CheckName.PERPLEXITY_INCREASE: CheckLook("General text: perplexity change vs the parent", "max", "change"),
    CheckName.GENERAL_AGREEMENT: CheckLook("General prompts: agreement with the base model", "min", "share"),
    CheckName.UNTAINTED: CheckLook("Untainted by forgotten items", "flag", "raw"),
}
UNIT_AXIS = {"count": "items", "share": "accuracy", "points": "% points", "change": "change",
             "logprob": "nats / token", "raw": "value"}


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("points", "change"):  # signed, and a value that rounds to zero reads "0", not "-0"
        rounded = round(100 * value)
        return (f"{rounded:+d}" if rounded else "0") + (" pt" if unit == "points" else "%")
    return {"count": f"{value:.0f}", "share": f"{value:.0%}", "logprob": f"{value:+.3f}"}.get(unit, f"{value:.3g}")


def _width(n: int, per: float, base: float) -> float:
    """Figure width in inches for n columns; capped so the page shows it near its own size."""
    return min(9.0, max(6.0, per * n + base))


STYLE = {"figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False, "axes.titleweight": "bold",
         "font.size": 10, "legend.fontsize": 9}


class _Figures:
    """The three pieces of pyplot the figures use, without pyplot: a `Figure` made directly renders to a file with
    no backend chosen and no global state changed. The style applies through `rc_context` while writing."""

    def __init__(self):
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        self._figure, self.MaxNLocator = Figure, MaxNLocator

    def subplots(self, nrows: int = 1, ncols: int = 1, *, figsize=None, **kwargs):
        fig = self._figure(figsize=figsize)
        return fig, fig.subplots(nrows, ncols, **kwargs)

    def close(self, fig) -> None:
        """Nothing to release: no pyplot registry holds the figure."""


def _version_number(version: str) -> int:
    return int(version[1:]) if version[1:].isdigit() else 0


def _rejected(versions: list[AdapterVersion]) -> set[str]:
    return {v.version for v in versions if v.status is AdapterStatus.REJECTED}


def write_report(store: Store, out: Path) -> Path:
    """Write `out/index.html` and its figures; returns the page's path."""
    out.mkdir(parents=True, exist_ok=True)
    with store.transaction() as con:
        versions = registry.versions(con, store.folder)
        # Only items still kept: a forgotten item's old probe results say nothing about what is remembered now.
        matrix = [(e, t, acc, n) for (e, t), (acc, n) in accuracy_matrix(con).items()]
        first, last = item_rows.time_span(con)
        unit = _time_unit(first, last) if first is not None else "day"
        routing = item_rows.routes_over_time(con, unit)
        counts = item_rows.status_counts(con)
    import matplotlib

    plt = _Figures()
    with matplotlib.rc_context(STYLE):
        figures = [
            _accuracy_matrix(plt, matrix, versions, out),
            _retention(plt, versions, out),
            _bwt(plt, versions, out),
            _routing(plt, routing, unit, out),
            _lineage(plt, versions, out),
            _gate(plt, versions, out),
        ]
    page = out / "index.html"
    page.write_text(_html(store, versions, counts, figures), encoding="utf-8")
    return page


def _save(plt, fig, out: Path, name: str) -> str:
    fig.savefig(out / name, bbox_inches="tight", pad_inches=0.15)  # "tight": a legend beside the axes is kept
    plt.close(fig)
    return name


def _empty(plt, out: Path, name: str, message: str) -> str:
    fig, ax = plt.subplots(figsize=(7, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", color="#495057")
    return _save(plt, fig, out, name)


def _version_ticks(ax, names: list[str], rejected: set[str], axis: Literal["x", "y"] = "x") -> None:
    """Versions as tick labels; a rejected one in red with "(rejected)"; slanted when many."""
    many = len(names) > 8
    sep = " " if many or axis == "y" else "\n"
    labels = [f"{v}{sep}(rejected)" if v in rejected else v for v in names]
    if axis == "x":
        ax.set_xticks(range(len(names)), labels, rotation=40 if many else 0, ha="right" if many else "center",
                      rotation_mode="anchor" if many else "default")
        ticks = ax.get_xticklabels()
    else:
        ax.set_yticks(range(len(names)), labels)
        ticks = ax.get_yticklabels()
    for label, version in zip(ticks, names):
        if version in rejected:
            label.set_color(FAILED)


def _accuracy_matrix(plt, matrix, versions, out) -> Figure:
    title = "Accuracy matrix across rounds"
    caption = ("Probe accuracy of each adapter (row) on the items each round learned as new (column), counting "
               "only items still kept. The outlined diagonal is what each round learned; left of it, what later "
               "adapters kept of earlier rounds; blank: not probed. Hatched grey rows are candidates the gate "
               "rejected: they never served.")
    known = {v.version for v in versions}
    rounds = sorted({t for _, t, _, _ in matrix if t in known} | {e for e, _, _, _ in matrix if e in known},
                    key=_version_number)
    if not rounds:
        return Figure(_empty(plt, out, "accuracy_matrix.png", "no evaluations yet: run engramma consolidate"),
                      title, caption)
    import numpy as np
    from matplotlib.patches import Rectangle

    rejected = _rejected(versions)
    grid = np.full((len(rounds), len(rounds)), np.nan)
    for evaluated, task, accuracy, _ in matrix:
        if evaluated in rounds and task in rounds:
            grid[rounds.index(evaluated), rounds.index(task)] = accuracy
    n = len(rounds)
    size = min(8.0, max(4.5, 0.55 * n + 2.5))
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    fontsize = 10 if n <= 8 else 8 if n <= 14 else 6
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    for r, version in enumerate(rounds):
        if version in rejected:
            ax.add_patch(Rectangle((-0.5, r - 0.5), n, 1, facecolor="#ced4da", alpha=0.85, edgecolor="#868e96",
                                   hatch="//", linewidth=0))
    for r in range(n):  # drawn after the rows, so a rejected row does not cover its diagonal's outline
        ax.add_patch(Rectangle((r - 0.46, r - 0.46), 0.92, 0.92, fill=False, edgecolor="#f76707", linewidth=2))
    for r in range(n if n <= 24 else 0):  # past 24 rounds the numbers no longer fit their cells
        for c in range(n):
            if not np.isnan(grid[r, c]):
                dark = grid[r, c] < 0.6 and rounds[r] not in rejected
                ax.text(c, r, f"{grid[r, c]:.0%}", ha="center", va="center", fontsize=fontsize,
                        color="white" if dark else "black")
    _version_ticks(ax, rounds, rejected, "x")
    _version_ticks(ax, rounds, rejected, "y")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("round the probed items were learned in (new items of that version)")
    ax.set_ylabel("adapter evaluated")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="probe accuracy", shrink=0.8, format=lambda x, _: f"{x:.0%}")
    return Figure(_save(plt, fig, out, "accuracy_matrix.png"), title, caption)


def _gated(versions: list[AdapterVersion]) -> list[AdapterVersion]:
    return [v for v in versions if v.metrics.get("gate")]


def _retention(plt, versions, out) -> Figure:
    title = "New and retained knowledge per round"
    caption = ("For each gated version: probe accuracy on its own new items (blue circles) and on earlier rounds' "
               "items (green squares), beside the parent it would replace on those earlier items (hollow, dotted). "
               "✓ / ✗: the gate's verdict.")
    gated = _gated(versions)
    if not gated:
        return Figure(_empty(plt, out, "retention.png", "no gated versions yet"), title, caption)
    rejected = _rejected(versions)
    fig, ax = plt.subplots(figsize=(_width(len(gated), 0.6, 3), 3.8))
    from matplotlib.transforms import ScaledTranslation

    x = list(range(len(gated)))

    def series(key):
        return x, [v.metrics.get(key) if v.metrics.get(key) is not None else float("nan") for v in gated]

    def shifted(points: float):  # the lines sit a few points apart, so equal values do not hide each other
        return ax.transData + ScaledTranslation(points / 72, 0, fig.dpi_scale_trans)

    ax.plot(*series("new_accuracy"), "o-", color="#1971c2", markersize=7, linewidth=2, label="new items",
            transform=shifted(-7))
    ax.plot(*series("retention"), "s-", color="#2b8a3e", markersize=7, linewidth=2, label="earlier rounds")
    ax.plot(*series("parent_retention"), "s:", color="#2b8a3e", markerfacecolor="white", markersize=7,
            linewidth=1.5, label="earlier rounds, parent", transform=shifted(7))
    for n, v in enumerate(gated):
        passed = v.metrics["gate"]["passed"]
        ax.annotate("✓" if passed else "✗", (n, 1.1), ha="center", fontsize=12, fontweight="bold",
                    color=PASSED if passed else FAILED, annotation_clip=False)
    _version_ticks(ax, [v.version for v in gated], rejected)
    ax.set_xlim(-0.4, len(gated) - 0.6)
    ax.set_ylim(-0.06, 1.06)
    ax.yaxis.set_major_formatter(lambda y, _: f"{y:.0%}")
    ax.set_ylabel("probe accuracy")
    ax.set_xlabel("gated version")
    ax.set_title(title, pad=22)
    ax.grid(axis="y", color="#e9ecef")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return Figure(_save(plt, fig, out, "retention.png"), title, caption)


def _bwt(plt, versions, out) -> Figure:
    title = "Backward transfer over time"
    caption = ("BWT (line): mean change in accuracy on each earlier round since that round was learned, in "
               "percentage points (pt); 0 is no forgetting, below 0 is forgetting. Bars: the largest drop of any "
               "one earlier round from its best accuracy (none when every round is as good as ever).")
    points = [v for v in _gated(versions) if v.metrics.get("bwt") is not None]
    if not points:
        return Figure(_empty(plt, out, "bwt.png", "BWT needs two gated rounds in one chain"), title, caption)
    rejected = _rejected(versions)
    fig, ax = plt.subplots(figsize=(_width(len(points), 0.6, 3), 3.4))
    x = list(range(len(points)))
    # forgetting is max(earlier accuracy) - accuracy now: below 0 when a round was answered better than ever,
    # which is no drop at all
    drops = [-max(0.0, v.metrics.get("max_forgetting") or 0.0) for v in points]
    bwt = [v.metrics["bwt"] for v in points]
    ax.bar(x, drops, width=0.5, color="#ffa8a8", label="largest drop of one earlier round")
    ax.plot(x, bwt, "o-", color="#c92a2a", markersize=7, linewidth=2, label="BWT")
    for n, value in enumerate(bwt if len(points) <= 16 else []):
        ax.annotate(_fmt(value, "points"), (n, value), textcoords="offset points", xytext=(9, 4), fontsize=8,
                    color="#c92a2a")
    ax.axhline(0, color="#495057", linewidth=0.8)
    _version_ticks(ax, [v.version for v in points], rejected)
    ax.set_xlim(-0.5, len(points) - 0.5)
    low, high = min(drops + bwt + [0]), max(bwt + [0])
    pad = max(0.05, 0.1 * (high - low))
    ax.set_ylim(low - pad, high + pad)
    ax.yaxis.set_major_formatter(lambda y, _: _fmt(y, "points") if y else "0")
    ax.set_ylabel("accuracy change (% points)")
    ax.set_xlabel("gated version")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return Figure(_save(plt, fig, out, "bwt.png"), title, caption)


UNITS = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1),
         "month": timedelta(days=31)}
UNIT_LABELS = {"hour": "%b %d %H:00", "day": "%Y-%m-%d", "week": "%Y-%m-%d", "month": "%Y-%m"}


def _time_unit(first: datetime, last: datetime) -> str:
    """The finest of hour, day, week, month that spans first..last in at most MAX_BINS bars."""
    for unit, length in UNITS.items():
        if (last - first) / length < MAX_BINS - 1:
            return unit
    return "month"


def _next_bin(at: datetime, unit: str) -> datetime:
    if unit == "month":
        return at.replace(year=at.year + at.month // 12, month=at.month % 12 + 1)
    return at + UNITS[unit]


def _routing(plt, routing, unit: str, out) -> Figure:
    title = "Routing mix over time"
    caption = (f"Items per {unit} of their own timestamp (ts: when the item happened, as the caller stamped it; "
               f"observe stamps the current time when none is given), by the route the policy chose "
               "(drop: only the hash and the reason were kept).")
    if not routing:
        return Figure(_empty(plt, out, "routing.png", "no items observed yet"), title, caption)
    by = defaultdict(dict)
    for at, route, n in routing:
        by[route][at] = n
    bins = [routing[0][0]]
    while bins[-1] < routing[-1][0]:  # every bin from the first to the last, the empty ones too
        bins.append(_next_bin(bins[-1], unit))
    fig, ax = plt.subplots(figsize=(_width(len(bins), 0.25, 3.5), 3.6))
    bottom = [0] * len(bins)
    for route in ("index", "both", "train", "drop"):
        values = [by[route].get(b, 0) for b in bins]
        if any(values):
            ax.bar(range(len(bins)), values, bottom=bottom, width=0.8, color=ROUTE_COLOURS[route], label=route)
            bottom = [b + v for b, v in zip(bottom, values)]
    step = -(-len(bins) // 10)  # at most 10 labelled ticks
    ticks = range(0, len(bins), step)
    slanted = len(bins) > 1
    ax.set_xticks(ticks, [("week of " if unit == "week" else "") + bins[n].strftime(UNIT_LABELS[unit])
                          for n in ticks], rotation=30 if slanted else 0, ha="right" if slanted else "center")
    pad = max(0.0, (6 - len(bins)) / 2)  # a few bars stay bar-shaped
    ax.set_xlim(-0.6 - pad, len(bins) - 0.4 + pad)
    ax.yaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_ylabel("items")
    ax.set_xlabel(f"{unit} the item happened (ts)")
    ax.set_title(title)
    ax.legend(title="route", loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return Figure(_save(plt, fig, out, "routing.png"), title, caption)


def _lineage(plt, versions, out) -> Figure:
    title = "Adapter lineage"
    caption = ("Each version, by train scope, with an arrow from its parent; colour is its status, a black ring marks "
               "a version tainted by a forgotten item, a diamond a merge.")
    if not versions:
        return Figure(_empty(plt, out, "lineage.png", "no adapters yet"), title, caption)
    from matplotlib.lines import Line2D

    scopes = sorted({v.train_scope for v in versions}, key=lambda s: (s != "global", s))
    at = {v.version: (n, scopes.index(v.train_scope)) for n, v in enumerate(versions)}
    fig, ax = plt.subplots(figsize=(_width(len(versions), 0.6, 2.5), 1.3 + 0.9 * len(scopes)))
    for v in versions:
        x, y = at[v.version]
        sources = v.config.merged_from or ([v.parent] if v.parent else [])
        for source in sources:
            if source in at:
                ax.annotate("", xy=(x, y), xytext=at[source], arrowprops={
                    "arrowstyle": "-|>", "color": "#868e96", "shrinkA": 11, "shrinkB": 11, "mutation_scale": 14})
        ax.scatter([x], [y], s=260, marker="D" if v.config.merged_from else "o",
                   color=STATUS_COLOURS[v.status.value], edgecolors=TAINT if v.tainted else "white",
                   linewidths=3 if v.tainted else 1, zorder=3)
        ax.text(x, y - 0.3, v.version, ha="center", va="top", fontsize=9)
    handles = [Line2D([], [], marker="o", linestyle="", markersize=9, color=colour, label=status)
               for status, colour in STATUS_COLOURS.items()]
    if any(v.tainted for v in versions):
        handles.append(Line2D([], [], marker="o", linestyle="", markersize=9, color="white",
                              markeredgecolor=TAINT, markeredgewidth=2.5, label="tainted"))
    if any(v.config.merged_from for v in versions):
        handles.append(Line2D([], [], marker="D", linestyle="", markersize=8, color="#495057", label="merge"))
    ax.set_yticks(range(len(scopes)), scopes)
    ax.set_ylabel("train scope")
    ax.set_xticks([])
    ax.spines["bottom"].set_visible(False)
    ax.set_xlim(-0.5, len(versions) - 0.5)
    ax.set_ylim(-0.8, len(scopes) - 0.4)
    ax.set_title(title)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return Figure(_save(plt, fig, out, "lineage.png"), title, caption)


def _look(name: str, checks: list[dict]) -> CheckLook:
    if name in CHECK_LOOKS:
        return CHECK_LOOKS[name]
    # A check this page does not know: its direction is whichever agrees with the verdicts.
    known = [c for c in checks if c["value"] is not None]
    at_least = all((c["value"] >= c["threshold"]) == c["passed"] for c in known)
    return CheckLook(name, "min" if at_least else "max", "raw")


SIGNS = {"min": "≥", "above": ">", "max": "≤", "flag": ""}


def _gate(plt, versions, out) -> Figure:
    title = "Gate outcomes"
    caption = ("One panel per check: each gated version's measured value (bar) against the threshold the policy "
               "set (dashed line); a minimum (≥) passes at or above its line, a limit (≤) at or below it; green "
               "passed, red failed; not checked (n/a): the check did not apply to that round. The table below gives "
               "each check's details.")
    gated = _gated(versions)
    if not gated:
        return Figure(_empty(plt, out, "gate.png", "no gated versions yet"), title, caption)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rejected = _rejected(versions)
    by_check: dict[str, dict[str, dict]] = {}
    for v in gated:
        for c in v.metrics["gate"]["checks"]:
            by_check.setdefault(c["name"], {})[v.version] = c
    order = list(CHECK_LOOKS)
    names = sorted(by_check, key=lambda n: (order.index(n) if n in order else len(order), n))
    looks = [_look(name, list(by_check[name].values())) for name in names]
    heights = [0.7 if look.bound == "flag" else 1.75 for look in looks]
    labels = len(gated) <= 16  # value labels on every bar while they fit
    fig, axes = plt.subplots(len(names), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": heights},
                             figsize=(_width(len(gated), 0.6, 4), 0.5 + sum(heights)))
    x = list(range(len(gated)))
    for ax, name, look in zip(axes[:, 0], names, looks):
        checks = by_check[name]
        ax.set_xlim(-0.6, len(gated) - 0.4)
        if look.bound == "flag":  # a yes/no check: its verdict, written where the bar would be
            for n, v in enumerate(gated):
                if v.version in checks:
                    passed = checks[v.version]["passed"]
                    ax.text(n, 0.5, "passed" if passed else "failed", ha="center", va="center", fontsize=8.5,
                            fontweight="bold", color=PASSED if passed else FAILED)
            ax.set_ylim(0, 1)
            ax.set_yticks([])
            ax.spines["left"].set_visible(False)
            ax.set_title(look.label, loc="left", fontsize=10)
            continue
        values = [checks[v.version]["value"] if v.version in checks else None for v in gated]
        colours = [PASSED if checks.get(v.version, {}).get("passed") else FAILED for v in gated]
        drawn = [(n, value, colour) for n, value, colour in zip(x, values, colours) if value is not None]
        ax.bar([n for n, _, _ in drawn], [value for _, value, _ in drawn], width=0.55,
               color=[colour for _, _, colour in drawn])
        thresholds = {c["threshold"] for c in checks.values()}
        for n, v in enumerate(gated):  # a line per version: the policy may have changed between rounds
            if v.version in checks:
                ax.hlines(checks[v.version]["threshold"], n - 0.4, n + 0.4, color="#212529", linestyle="--",
                          linewidth=1.3, zorder=3)
        span = [0.0, *(value for _, value, _ in drawn), *thresholds]
        low, high = min(span), max(span)
        pad = 0.22 * (high - low or 1)
        ax.set_ylim(low - (pad if low < 0 else 0), high + pad)
        for n, value in enumerate(values):
            if value is None:
                ax.text(n, 0, "not checked" if len(gated) <= 8 else "n/a", ha="center", va="bottom", color=MUTED,
                        fontsize=8)
            elif labels:  # on a white patch: a threshold line passing behind it stays readable
                ax.annotate(_fmt(value, look.unit), (n, value), ha="center", va="bottom" if value >= 0 else "top",
                            textcoords="offset points", xytext=(0, 3 if value >= 0 else -3), fontsize=8.5,
                            color=colours[n], fontweight="bold", zorder=4,
                            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.9})
        ax.axhline(0, color="#adb5bd", linewidth=0.8)
        ax.yaxis.set_major_formatter(lambda y, _, unit=look.unit: "0" if y == 0 else _fmt(y, unit))
        ax.yaxis.set_major_locator(plt.MaxNLocator(3))
        sign = SIGNS[look.bound]
        rule = f"passes at {sign} {_fmt(thresholds.pop(), look.unit).lstrip('+')}" if len(thresholds) == 1 else \
            f"passes at {sign} its threshold, which changed between versions"
        ax.set_title(f"{look.label} ({rule})", loc="left", fontsize=10)
        ax.set_ylabel(UNIT_AXIS[look.unit], fontsize=8)
    _version_ticks(axes[-1, 0], [v.version for v in gated], rejected)
    fig.suptitle(title, fontweight="bold", x=0.02, ha="left")
    fig.legend(handles=[Patch(color=PASSED, label="passed"), Patch(color=FAILED, label="failed"),
                        Line2D([], [], color="#212529", linestyle="--", label="threshold")],
               loc="upper right", ncol=3, frameon=False, bbox_to_anchor=(1, 1.0))
    fig.tight_layout()
    return Figure(_save(plt, fig, out, "gate.png"), title, caption)


def _cell(value: object, css: str = "") -> str:
    attribute = f' class="{css}"' if css else ""
    return f"<td{attribute}>{html.escape(str(value))}</td>"


def _gate_table(versions: list[AdapterVersion]) -> str:
    rows = []
    for v in reversed(_gated(versions)):
        checks = v.metrics["gate"]["checks"]
        for n, c in enumerate(checks):
            look = _look(c["name"], [c])
            limit = _fmt(c["threshold"], look.unit).lstrip("+")
            threshold = "—" if look.bound == "flag" else f"{SIGNS[look.bound]} {limit}"
            head = (f'<td rowspan="{len(checks)}">{html.escape(v.version)}<br><span class="muted">'
                    f'{html.escape(v.status.value)}</span></td>') if n == 0 else ""
            rows.append("<tr>" + head + "".join((
                _cell(look.label), _cell("—" if look.bound == "flag" else _fmt(c["value"], look.unit)),
                _cell(threshold), _cell("passed" if c["passed"] else "failed", "pass" if c["passed"] else "fail"),
                _cell(c["detail"]))) + "</tr>")
    if not rows:
        return ""
    return ('<table><tr><th>version</th><th>check</th><th>value</th><th>threshold</th><th>result</th>'
            f'<th>details</th></tr>{"".join(rows)}</table>')


def _html(store: Store, versions: list[AdapterVersion], counts: dict, figures: list[Figure]) -> str:
    rows = []
    for v in reversed(versions):
        gate = v.metrics.get("gate")
        verdict = "—" if not gate else ("passed" if gate["passed"] else "failed: " + "; ".join(
            c["detail"] for c in gate["checks"] if not c["passed"]))
        rows.append("<tr>" + "".join(_cell(cell) for cell in (
            v.version, v.train_scope, v.status.value + (" (tainted)" if v.tainted else ""), v.parent or "—",
            f"{v.items_new} + {v.items_replayed}",
            _fmt(v.metrics.get("new_accuracy"), "share"), _fmt(v.metrics.get("retention"), "share"),
            verdict, v.created_at.strftime("%Y-%m-%d %H:%M"))) + "</tr>")
    sections = []
    for f in figures:
        table = _gate_table(versions) if f.file == "gate.png" else ""
        sections.append(f'<section><h2>{html.escape(f.title)}</h2><p>{html.escape(f.caption)}</p>'
                        f'<img src="{f.file}" alt="{html.escape(f.caption)}">{table}</section>')
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no items"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>engramma report: {html.escape(store.folder.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2rem auto; padding: 0 1rem; color: #212529; }}
h1 {{ margin-bottom: 0.2rem; }} .sub {{ color: #495057; margin-top: 0; }} .muted {{ color: #868e96; }}
section {{ margin: 2rem 0; }} img {{ display: block; max-width: 100%; margin: 0.5rem 0 1rem; }}
table {{ border-collapse: collapse; width: 100%; font-size: 0.9rem; }}
td, th {{ border-bottom: 1px solid #e9ecef; padding: 0.35rem 0.5rem; text-align: left; vertical-align: top; }}
th {{ background: #f8f9fa; }} td.pass {{ color: {PASSED}; font-weight: 600; }}
td.fail {{ color: {FAILED}; font-weight: 600; }}
</style></head><body>
<h1>engramma report: {html.escape(store.folder.name)}</h1>
<p class="sub">Store <code>{html.escape(str(store.folder))}</code>: items {html.escape(summary)};
{len(versions)} adapter version(s). How the memory learned over time: what each adapter learned and kept,
how items were routed, and why the gate promoted or rejected each candidate.</p>
<section><h2>Adapter versions</h2><p>Newest first. Accuracy is on probes: the new items of its round, and a sample
of earlier rounds' items.</p><table>
<tr><th>version</th><th>scope</th><th>status</th><th>parent</th><th>items new + replayed</th><th>new accuracy</th>
<th>retention</th><th>gate</th><th>created</th></tr>
{''.join(rows) or '<tr><td colspan="9">none yet</td></tr>'}
</table></section>
{chr(10).join(sections)}
</body></html>
"""
