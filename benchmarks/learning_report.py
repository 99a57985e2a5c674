"""The learning benchmark's tables and plots, from the cells a run saved: `learning-NAME.md`, `learning-NAME.json`
(every number the tables show, per cell and aggregated), `learning-NAME-round1.png`, `learning-NAME-general.png`."""
from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import learning_metrics as m

WORDINGS = (("probe", "probe wording"), ("heldout", "held-out wordings"))


def _load(run, cells) -> dict[str, dict]:
    out = {}
    for cell in cells:
        path = run.cells_dir / f"{cell.name}.json"
        if path.is_file():
            data = json.loads(path.read_text())
            if data.get("config") == run.config_hash:
                out[cell.name] = data
    return out


def _mean_row(row: list[float | None]) -> float | None:
    values = [v for v in row if v is not None]
    return sum(values) / len(values) if values else None


def _share(counts: dict, what: str) -> float | None:
    return counts.get(what, 0) / counts["asked"] if counts.get("asked") else None


def summarise(run, data: dict) -> dict:
    """The scalars the tables show, for one cell."""
    rounds = data["rounds"]
    decisions = [c.get("decision", c["status"]) for r in rounds for c in r["consolidation"]]
    final = data["final"]
    out = {"promoted": sum(d == "promoted" for d in decisions), "consolidations": len(decisions),
           "decisions": [[c.get("decision", c["status"]) + (f" ({', '.join(c['failed'])})" if c.get("failed") else "")
                          for c in r["consolidation"]] for r in rounds],
           "tokens": sum(c.get("tokens", 0) for r in rounds for c in r["consolidation"]),
           "train_s": sum(c.get("train_s", 0) for r in rounds for c in r["consolidation"]),
           "consolidate_s": sum(c["wall_s"] for r in rounds for c in r["consolidation"]),
           "eval_s": sum(r["eval_s"] for r in rounds), "wall_s": data["wall_s"],
           "perplexity_change": rounds[-1]["general"]["perplexity_change"],
           "max_perplexity_change": max(r["general"]["perplexity_change"] for r in rounds),
           "agreement": rounds[-1]["general"]["agreement"], "identical": rounds[-1]["general"]["identical"]}
    for w, _ in WORDINGS:
        for k, v in data["metrics"][w].items():
            out[f"{w}_{k}"] = v
        out[f"{w}_agent"] = _mean_row(final["agent"][w])
        out[f"{w}_round1"] = [r["weights"][w][0] for r in rounds]
    for setting in ("weights", "agent"):
        for what in ("current", "old", "neither", "both"):
            out[f"changed_{setting}_{what}"] = _share(final["changed"][setting], what)
        u = final["unanswerable"][setting]
        out[f"invented_{setting}"] = u["with_invented"] / u["asked"] if u["asked"] else None
    out["perplexity_by_round"] = [r["general"]["perplexity_change"] for r in rounds]
    out["agreement_by_round"] = [r["general"]["agreement"] for r in rounds]
    return out


def _fmt(value, pct: bool = False, signed: bool = False, whole: bool = False) -> str:
    if value is None:
        return "-"
    if whole:
        return f"{value:,.0f}"
    if pct:
        return f"{value:+.1%}" if signed else f"{value:.0%}"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _cell(group: list[dict], key: str, **fmt) -> str:
    mean, sd, n = m.spread([s.get(key) for s in group])
    if mean is None:
        return "-"
    text = _fmt(mean, **fmt)
    if sd is not None:
        text += " ± " + (f"{sd:,.0f}" if fmt.get("whole") else f"{sd:.1%}" if fmt.get("pct") else f"{sd:.2f}")
    return text


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


TRAINED_ON = {  # what each form trains a fact on (updater/dataset.py's templates), for the report's reader
    "statement": "the statement as plain text (a keyed fact: the statement as the answer to \"What is the <key>?\")",
    "probe": "the probe's question answered with the statement",
    "pair": "the probe wording as the prompt and the statement as the response",
}


def write(run, cells) -> Path:
    """Write the report files of `run` from its saved cells; returns the markdown file's path."""
    data = _load(run, cells)
    failed = {name: d["error"].strip().splitlines()[-1] for name, d in data.items() if "error" in d}
    ok = {name: d for name, d in data.items() if "error" not in d}
    per_cell = {name: summarise(run, d) for name, d in ok.items()}
    regimes = list(run.setting.regimes)
    groups: dict[tuple[str, str], list[str]] = {}
    for cell in cells:
        if cell.name in per_cell:
            # index trains nothing: its one cell stands for both regimes
            for regime in (regimes if cell.strategy == "index" else [cell.regime]):
                groups.setdefault((cell.strategy, regime), []).append(cell.name)
    order = [(s, r) for r in regimes for s in run.setting.strategies if (s, r) in groups]
    recall = next((per_cell[n[0]] for (s, _), n in groups.items() if s == "index"), None)
    base_invented = run.base.get("invented")
    stream = run.stream
    # held-out wordings where the stream has them (how users ask); else the probe wording
    w0 = "heldout" if any(f.paraphrases for f in stream.facts) else "probe"
    l0 = dict(WORDINGS)[w0]

    def g(key):
        return [per_cell[n] for n in groups[key]]

    def seeds(key):
        n = len(groups[key])
        return f"{n}" + ("" if n > 1 or key[0] == "index" else " (one seed)")

    sizes = [len(r) for r in stream.stable]
    ungated_rejections = {name: [d for d in sum(c["decisions"], []) if not d.startswith("promoted")]
                          for name, c in per_cell.items() if "-ungated-" in name}
    lines = [f"# Learning benchmark: {run.name}", "",
             f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {platform.node() or 'this machine'} "
             f"({platform.processor() or platform.machine()}, {_cpus()} CPUs, {_accelerator()}), Python "
             f"{platform.python_version()}. Command: `python benchmarks/learning.py {' '.join(sys.argv[1:])}`.", "",
             f"- stream: `{run.config['stream']}` ({run.config['split']} split), {len(stream.rounds)} rounds of "
             f"{', '.join(str(len(r)) for r in stream.rounds)} facts, observed in the `{run.form}` form, which trains "
             f"{TRAINED_ON[run.form]}; {sum(sizes)} stable facts in the accuracy matrix, {len(stream.changed)} facts "
             f"whose value changed, {len(run.config['unanswerable'])} questions no fact answers, {len(run.prompts)} "
             f"general prompts, {run.config['paragraphs']} general paragraphs;",
             f"- model: `{run.config['model']}`; every strategy: the shipped default preset's model, LoRA, training, "
             f"replay budget and gate, with `min_items: 1`" + (", and " + ", ".join(f"`{k}: {v}`" for k, v in
                                                                run.setting.overrides) if run.setting.overrides else "")
             + ";",
             "- **gated**: exactly as shipped, the gate decides and the agent uses what was promoted; **ungated**: the "
             "gate's thresholds opened, so every candidate is promoted and measured (the `new_likelihood` check, which "
             "has no threshold, can still reject: any such verdict is listed below);",
             "- accuracy is from the weights alone (the agent's `answer(recall=False)`: its system prompt, its active "
             "adapters) unless named; an answer is right when an accepted answer appears in it as whole words. The "
             "*probe wording* is each fact's question (what the probe and pair forms train on); *held-out wordings* "
             "are two paraphrases of it that no strategy ever trains on. The agent as shipped is asked the held-out "
             "wordings (the probe wording where a stream has none);",
             "- R[i][j] is the accuracy after round i on round j's facts; BWT = mean of R[T][j] - R[j][j]; "
             "FWT = mean of R[j-1][j] - base[j]; forgetting = mean of the best earlier R[i][j] minus R[T][j]; "
             "new = mean of R[j][j]; mean ± sample standard deviation over seeds;",
             "- `hybrid` keeps keyed facts (the ones the data marks as changeable) in the index only, so its weights "
             "never hold them: compare it on the agent as shipped. At this scale the reservoir (1,000 slots) holds "
             "every fact, so `reservoir` is uniform replay over all learned facts, as `random` is.", ""]
    if failed:
        lines += ["**Cells that failed** (rerun with `--resume`): " + "; ".join(f"{k}: {v}" for k, v in failed.items()), ""]
    if any(ungated_rejections.values()):
        lines += ["**Ungated verdicts other than promoted**: " + "; ".join(
            f"{k}: {', '.join(v)}" for k, v in ungated_rejections.items() if v) + ".", ""]
    same = {name: d["same_as"] for name, d in ok.items() if d.get("same_as")}
    if same:
        lines += ["Ungated cells whose gated twin promoted every round are that same run (the regimes differ only in "
                  "the gate's verdicts; training is seeded and deterministic), and their cost is the twin's: " + ", ".join(
                      f"{k} = {v}" for k, v in same.items()) + ".", ""]
    missing = [c.name for c in cells if c.name not in data]
    if missing:
        lines += [f"**Cells not run yet**: {', '.join(missing)}.", ""]
    name = run.name
    summary = {"run": name, "config": run.config_hash, "cells": per_cell, "failed": failed,
               "groups": {f"{s}|{r}": {k: m.spread([per_cell[n].get(k) for n in groups[(s, r)]])
                                       for k in per_cell[groups[(s, r)][0]] if _scalar(per_cell[groups[(s, r)][0]][k])}
                          for s, r in order},
               "recall_alone": {w: recall[f"{w}_agent"] for w, _ in WORDINGS} if recall else None,
               "base_invented": base_invented}
    (run.out / f"{name}.json").write_text(json.dumps(summary, indent=1, default=str))
    md = run.out / f"{name}.md"
    if not order:
        md.write_text("\n".join(lines + ["No cell has finished yet."]))
        return md

    lines += ["## Summary", "", _table(
        ["strategy", "regime", "seeds", "promoted", "new (probe)", f"new ({l0})", f"final ({l0})",
         f"BWT ({l0})", f"forgetting ({l0})", f"agent ({l0})", "perplexity", "agreement", "invented (agent)"],
        [[s, r, seeds((s, r)), _promoted(g((s, r))), _cell(g((s, r)), "probe_new_accuracy"),
          _cell(g((s, r)), f"{w0}_new_accuracy"), _cell(g((s, r)), f"{w0}_average_accuracy"),
          _cell(g((s, r)), f"{w0}_bwt", signed=True), _cell(g((s, r)), f"{w0}_forgetting"),
          _cell(g((s, r)), f"{w0}_agent"), _cell(g((s, r)), "perplexity_change", pct=True, signed=True),
          _cell(g((s, r)), "agreement"), _cell(g((s, r)), "invented_agent", pct=True)] for s, r in order]), ""]
    for w, label in WORDINGS:
        lines += [f"## Accuracy matrix metrics, {label}", "", _table(
            ["strategy", "regime", "average accuracy", "BWT", "FWT", "forgetting", "new-round accuracy"],
            [[s, r, *(_cell(g((s, r)), f"{w}_{k}", signed=k in ("bwt", "fwt")) for k in
                      ("average_accuracy", "bwt", "fwt", "forgetting", "new_accuracy"))] for s, r in order]), ""]
    lines += ["## The agent as shipped: recall plus adapters, against each alone", "",
              f"After the last round, {l0}. Recall alone is the `index` strategy's agent: the base model answering "
              "with what it recalls.", "",
              _table(["strategy", "regime", "weights alone", "recall alone", "agent"],
                     [[s, r, _cell(g((s, r)), f"{w0}_average_accuracy"),
                       _fmt(recall[f"{w0}_agent"]) if recall else "-", _cell(g((s, r)), f"{w0}_agent")]
                      for s, r in order]), ""]
    lines += ["## Facts whose value changed: which value is answered", "",
              f"{len(stream.changed)} keys got a new value in a later round; each is asked in every wording after the "
              "last round: the current value, the old one, or neither (an answer naming both is counted apart).", "",
              _table(["strategy", "regime", "weights: current", "weights: old", "weights: neither",
                      "agent: current", "agent: old", "agent: neither"],
                     [[s, r] + [_cell(g((s, r)), f"changed_{who}_{what}", pct=True) for who in ("weights", "agent")
                                for what in ("current", "old", "neither")] for s, r in order]), ""]
    lines += ["## Questions no memory answers: answers stating invented specifics", "",
              "A specific is a number (price, time, date, count) or a name (a capitalised word not starting a "
              "sentence) that appears in no fact of the stream, nor in the question or what the model was shown "
              f"(its system prompt; for the agent, its recalled context). The base model, from its weights alone: "
              f"{_fmt(base_invented, pct=True)}.", "",
              _table(["strategy", "regime", "weights alone", "agent"],
                     [[s, r, _cell(g((s, r)), "invented_weights", pct=True), _cell(g((s, r)), "invented_agent", pct=True)]
                      for s, r in order]), ""]
    lines += ["## General ability, against the base model", "",
              f"Perplexity on {run.config['paragraphs']} paragraphs of general text (base: "
              f"{run.base.get('perplexity', float('nan')):.2f}), and agreement (mean word-level F1) of the answers to "
              f"{len(run.prompts)} general prompts with the base model's; after the last round, and the largest "
              "perplexity rise after any round.", "",
              _table(["strategy", "regime", "perplexity change", "largest after a round", "agreement", "identical answers"],
                     [[s, r, _cell(g((s, r)), "perplexity_change", pct=True, signed=True),
                       _cell(g((s, r)), "max_perplexity_change", pct=True, signed=True), _cell(g((s, r)), "agreement"),
                       _cell(g((s, r)), "identical", pct=True)] for s, r in order]), ""]
    lines += ["## Gate verdicts and failing checks, per round", "",
              _table(["cell"] + [f"round {n + 1}" for n in range(len(stream.rounds))],
                     [[cell_name] + ["; ".join(d) or "-" for d in per_cell[cell_name]["decisions"]]
                      for cell_name in per_cell if not cell_name.startswith("index-")]), ""]
    lines += ["## Cost", "", "Training tokens (all rounds), training time, the consolidation job's wall time "
              "(planning, training, gate), and the benchmark's own asking time, per cell (mean over seeds).", "",
              _table(["strategy", "regime", "training tokens", "training s", "consolidation s", "asking s", "cell min"],
                     [[s, r, _cell(g((s, r)), "tokens", whole=True), _cell(g((s, r)), "train_s", whole=True),
                       _cell(g((s, r)), "consolidate_s", whole=True), _cell(g((s, r)), "eval_s", whole=True),
                       f"{sum(x['wall_s'] for x in g((s, r))) / len(g((s, r))) / 60:.1f}"]
                      for s, r in order]), ""]
    if _plots(run, per_cell, groups, order, w0):
        lines += ["## Round 1's facts after each round", "", f"![round 1]({name}-round1.png)", "",
                  f"![general ability]({name}-general.png)", ""]
    lines += [f"## Accuracy matrices ({l0}; rows: after round i, columns: round j's facts)", ""]
    for cell_name, d in ok.items():
        rows = [[f"after {i + 1}"] + [_fmt(v) for v in r["weights"][w0]] for i, r in enumerate(d["rounds"])]
        lines += [f"`{cell_name}`", "", _table([""] + [f"r{j + 1}" for j in range(len(stream.rounds))], rows), ""]
    md.write_text("\n".join(lines))
    return md


def _accelerator() -> str:
    try:
        import torch

        return f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    except ImportError:
        return "no GPU"


def _scalar(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) or value is None


def _promoted(group: list[dict]) -> str:
    """Rounds promoted of rounds consolidated, per seed ("-": the strategy never trains)."""
    return ", ".join(f"{s['promoted']}/{s['consolidations']}" for s in group if s["consolidations"]) or "-"


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def _plots(run, per_cell, groups, order, w0: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    nan = float("nan")
    regimes = list(dict.fromkeys(r for _, r in order))
    rounds = list(range(1, len(run.stream.rounds) + 1))
    wordings = [w for w in WORDINGS if w[0] == "probe" or w[0] == w0]
    fig, axes = plt.subplots(len(wordings), len(regimes), figsize=(6 * len(regimes), 4 * len(wordings)),
                             squeeze=False, sharey=True)
    for col, regime in enumerate(regimes):
        for row, (w, label) in enumerate(wordings):
            ax = axes[row][col]
            for s, r in order:
                if r != regime:
                    continue
                series = [per_cell[n][f"{w}_round1"] for n in groups[(s, r)]]
                stats = [m.spread([x[i] for x in series]) for i in range(len(rounds))]
                means = [nan if st[0] is None else st[0] for st in stats]
                errors = [st[1] or 0.0 for st in stats]
                ax.errorbar(rounds, means, yerr=errors, marker="o", capsize=3, label=s)
            ax.set_title(f"{regime}: round 1's facts, {label}")
            ax.set_xlabel("after round")
            ax.set_ylabel("accuracy (weights alone)")
            ax.set_xticks(rounds)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        axes[0][col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run.out / f"{run.name}-round1.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, len(regimes), figsize=(6 * len(regimes), 7), squeeze=False)
    for col, regime in enumerate(regimes):
        for row, (key, label) in enumerate((("perplexity_by_round", "perplexity change vs base"),
                                            ("agreement_by_round", "agreement with the base model"))):
            ax = axes[row][col]
            for s, r in order:
                if r != regime:
                    continue
                series = [per_cell[n][key] for n in groups[(s, r)]]
                means = [m.spread([x[i] for x in series])[0] for i in range(len(rounds))]
                ax.plot(rounds, [nan if v is None else v for v in means], marker="o", label=s)
            ax.set_title(f"{regime}: {label}")
            ax.set_xlabel("after round")
            ax.set_xticks(rounds)
            ax.grid(alpha=0.3)
        axes[0][col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run.out / f"{run.name}-general.png", dpi=110)
    plt.close(fig)
    return True
