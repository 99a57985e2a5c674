"""The learning benchmark (benchmarks/learning.py): its measures on hand-made cases, and a `--quick` run on the
tiny model whose files must be complete and agree with each other (every number recomputed from the saved
matrices and answers)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import child_env

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import learning  # noqa: E402
import learning_metrics as m  # noqa: E402
from learning_data import load_stream, read_jsonl, split_rounds  # noqa: E402


@pytest.mark.parametrize("answer, accepted, right", [
    ("It closes at 9 pm on summer evenings.", ["9 pm"], True),
    ("It closes at 19 pm.", ["9 pm"], False),  # whole words only
    ("The prize is 18,000 euros.", ["18000 euros"], True),  # thousands separators do not matter
    ("The Spice Girls.", ["Spice Girls"], True),
    ("I do not know.", ["Caldrevyn"], False),
    ("", ["x"], False),
])
def test_answers_match_as_whole_words(answer, accepted, right):
    assert m.matches(answer, accepted) is right


def test_continual_metrics_of_a_known_matrix():
    matrix = [[0.5, 0.1, None], [0.4, 0.6, 0.2], [0.3, 0.5, 0.7]]
    got = m.continual(matrix, base=[0.1, 0.1, 0.1])
    assert got["average_accuracy"] == pytest.approx(0.5)
    assert got["bwt"] == pytest.approx(((0.3 - 0.5) + (0.5 - 0.6)) / 2)
    assert got["fwt"] == pytest.approx(((0.1 - 0.1) + (0.2 - 0.1)) / 2)
    assert got["forgetting"] == pytest.approx(((0.5 - 0.3) + (0.6 - 0.5)) / 2)
    assert got["new_accuracy"] == pytest.approx(0.6)
    one = m.continual([[0.8]], base=[0.0])
    assert one["bwt"] is None and one["fwt"] is None and one["average_accuracy"] == 0.8


def test_invented_specifics_are_numbers_and_names_no_fact_holds():
    known = "Frostellyx headphones are assembled in Caldrevyn. The fee is 3.80 euros, opening at 10:45 since 2011."
    assert m.invented_specifics("Frostellyx's headphones come from Caldrevyn.", known) == []
    assert m.invented_specifics("I'm sorry, I don't know that.", known) == []
    assert m.invented_specifics("The fee is 3.80 euros and it opened in 2011.", known) == []
    assert m.invented_specifics("They cost 4.20 euros and ship from Norvik.", known) == ["4.20", "norvik"]
    assert m.invented_specifics("It has 1,200 seats.", known) == ["1200"]


def test_agreement_and_changed_values():
    assert m.agreement(["Paris is the capital."], ["Paris is the capital."]) == {"agreement": 1.0, "identical": 1.0}
    assert m.agreement(["Blue."], ["Red."])["agreement"] == 0.0
    assert m.which_value("It is now 4.60 euros.", ("3.80 euros",), ("4.60 euros",)) == "current"
    assert m.which_value("It costs 3.80 euros.", ("3.80 euros",), ("4.60 euros",)) == "old"
    assert m.which_value("No idea.", ("3.80 euros",), ("4.60 euros",)) == "neither"


def test_the_invented_stream_keeps_wordings_apart_and_changes_in_later_rounds():
    stream = load_stream("invented", data=None, split="test", rounds=5, per_round=24)
    assert [len(r) for r in stream.rounds] == [24] * 5
    for fact in stream.facts:
        assert len(fact.paraphrases) == 2 and fact.question not in fact.paraphrases
        assert m.matches(fact.statement, fact.answers), fact
        assert not any(m.matches(w, fact.answers) for w in (fact.question, *fact.paraphrases)), fact
    assert len(stream.changed) == 12
    assert all(old.round < new.round and old.answers != new.answers for old, new in stream.changed)
    dev = load_stream("invented", data=None, split="dev", rounds=3, per_round=24)
    assert not {f.statement for f in dev.facts} & {f.statement for f in stream.facts}, "dev and test are apart"
    short = load_stream("invented", data=None, split="test", rounds=2, per_round=6)
    assert short.changed, "a short run still has a fact whose value changes"


def test_a_round_keeps_the_later_value_of_a_key(tmp_path):
    data = tmp_path / "s.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Who leads X?", "answer": "Ann", "date": "2020-01-01", "key": "x"},
        {"question": "Who leads X?", "answer": "Bo", "date": "2020-01-02", "key": "x"},
        {"question": "Where is Y?", "answer": "Oslo", "date": "2020-02-01"},
        {"question": "Who leads X?", "answer": "Cy", "date": "2020-03-01", "key": "x"},
    ]) + "\n")
    stream = load_stream("jsonl", data=data, split="test", rounds=2, per_round=2)
    assert [[f.answers[0] for f in r] for r in stream.rounds] == [["Bo"], ["Oslo", "Cy"]]
    assert [(o.answers[0], n.answers[0]) for o, n in stream.changed] == [("Bo", "Cy")]
    assert stream.rounds[0][0].statement == "Who leads X? Answer: Bo."
    with pytest.raises(ValueError, match="too few"):
        split_rounds(read_jsonl(data), 3, 2)
    with pytest.raises(ValueError, match="2 rounds, 3 asked"):  # facts that name their rounds
        split_rounds(list(stream.facts), 3, 2)


def test_each_strategy_gets_its_own_replay_and_the_same_everything_else():
    policies = {s: learning.policy_for(learning.STRATEGIES[s], "gated", 1, ()) for s in learning.STRATEGIES}
    def shared_part(policy):  # everything of consolidation but the replay strategy and the KL weight
        training = {k: v for k, v in policy["consolidation"]["training"].items() if k != "kl_weight"}
        return {**{k: v for k, v in policy["consolidation"].items() if k != "replay"}, "training": training}

    shared = {s: shared_part(p) for s, p in policies.items()}
    for s, p in policies.items():
        assert p["consolidation"]["training"]["kl_weight"] == (1.0 if s == "retrieval-kl" else 0.0)
        assert p["gate"] == policies["naive"]["gate"] and p["model"] == policies["naive"]["model"]
    assert len({json.dumps(v, sort_keys=True) for v in shared.values()}) == 1, "same LoRA, training and budget"
    assert {s: p["consolidation"]["replay"] for s, p in policies.items()} == {
        "index": "none", "naive": "none", "random": "random", "reservoir": "reservoir", "retrieval": "retrieval",
        "mir": "mir", "retrieval-kl": "retrieval", "hybrid": "retrieval"}
    ungated = learning.policy_for(learning.STRATEGIES["naive"], "ungated", 1, ())
    assert ungated["gate"]["min_new_accuracy"] == 0 and ungated["consolidation"] == policies["naive"]["consolidation"]
    with pytest.raises(SystemExit, match="each strategy sets this itself"):
        learning.parse_overrides(["consolidation.replay=none"])


def _row(md: str, strategy: str, regime: str, section: str) -> list[str]:
    """The cells of the table row for (strategy, regime) in the section headed `section`."""
    body = md.split(section + "\n", 1)[1].split("\n## ", 1)[0]
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:2] == [strategy, regime]:
            return cells
    raise AssertionError(f"no row for {strategy}/{regime} in {section!r}")


def _bwt(matrix):
    """BWT written out by hand: the last row against the diagonal, over the rounds before the last."""
    last = len(matrix) - 1
    diffs = [matrix[last][j] - matrix[j][j] for j in range(last)]
    return sum(diffs) / len(diffs)


def test_situatedqa_changes_are_real_changes_and_coarse_years_give_way(tmp_path):
    rows = [  # (id, date, date_type, answers)
        (1, "2019", "start", ["Ann"]), (1, "March 3, 2019", "start", ["Ann"]), (1, "June 1, 2020", "start", ["Bo"]),
        (2, "2020", "start", ["Joe Biden"]), (2, "2021", "start", ["Biden", "Joe Biden"]),
        (3, "May 2, 2020", "start", ["Oslo"]), (3, "2020", "sampled_year", ["Oslo"]),
    ]
    (tmp_path / "qa_data_temp.test.jsonl").write_text("\n".join(json.dumps(
        {"question": f"who leads club {i}", "id": i, "date": d, "date_type": t, "answer": a}) for i, d, t, a in rows))
    stream = load_stream("situatedqa", data=tmp_path, split="test", rounds=5, per_round=1)
    assert [(f.date.date().isoformat(), f.answers) for f in stream.facts] == [
        ("2019-03-03", ("Ann",)), ("2020-01-01", ("Joe Biden",)), ("2020-05-02", ("Oslo",)),
        ("2020-06-01", ("Bo",)), ("2021-01-01", ("Biden", "Joe Biden"))], "the year-only 2019 row of club 1 gave way"
    assert [(o.answers, n.answers) for o, n in stream.changed] == [(("Ann",), ("Bo",))], "Biden is no change"
    assert [[f.answers[0] for f in r] for r in stream.stable] == [[], ["Joe Biden"], ["Oslo"], [], []], \
        "changed keys leave the matrix; a key that recurs unchanged counts once, where it was first taught"
    assert all(not f.paraphrases for f in stream.facts)


def test_a_quick_run_writes_every_strategy_and_numbers_that_agree(tmp_path, tiny_model_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--quick", "--model", str(tiny_model_path),
               "--out", str(tmp_path)]
    done = subprocess.run(command + ["--no-reuse"], capture_output=True, text=True, env=child_env(), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    md = (tmp_path / "learning-quick.md").read_text()
    summary = json.loads((tmp_path / "learning-quick.json").read_text())
    base = json.loads((tmp_path / "learning-quick" / "base.json").read_text())
    assert (tmp_path / "learning-quick-round1.png").stat().st_size > 10_000
    assert (tmp_path / "learning-quick-general.png").stat().st_size > 10_000
    assert "forgetting" in md and not summary["failed"]

    stream = load_stream("invented", data=None, split="test", rounds=2, per_round=6)
    cells = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "learning-quick" / "cells").glob("*.json")}
    trained = [s for s in learning.STRATEGIES if s != "index"]
    assert set(cells) == {"index-gated-s0"} | {f"{s}-{r}-s0" for s in trained for r in learning.REGIMES}
    for strategy in learning.STRATEGIES:
        for regime in learning.REGIMES:
            assert _row(md, strategy, regime, "## Summary")  # every strategy has a row in both regimes

    for name, cell in cells.items():
        rounds = cell["rounds"]
        assert len(rounds) == 2
        for which in ("probe", "heldout"):
            matrix = [r["weights"][which] for r in rounds]
            assert all(v is not None for v in matrix[0]) and all(v is not None for v in matrix[1])  # j <= i + 1
            assert summary["cells"][name][f"{which}_bwt"] == pytest.approx(_bwt(matrix))
            assert cell["metrics"][which]["bwt"] == pytest.approx(_bwt(matrix))
        if cell["cell"]["strategy"] != "index":
            assert all(len(r["consolidation"]) == 1 for r in rounds)
            if cell["cell"]["regime"] == "ungated":
                assert all(r["consolidation"][0]["decision"] == "promoted" for r in rounds)
        # the final tables are recomputed here from the saved answers
        final = cell["final"]
        agent, recalled = dict(final["answers"]["agent"]), dict(final["answers"]["recalled"])
        values = Counter(m.which_value(agent[q], old.answers, new.answers)
                         for old, new in stream.changed for q in (new.question, *new.paraphrases))
        assert {k: v for k, v in final["changed"]["agent"].items() if k != "asked"} == dict(values)
        for q in stream.unanswerable[:6]:
            known = "\n".join(stream.texts + [q, base["system"] + "\n" + recalled[q]])
            assert m.invented_specifics(agent[q], known) == final["unanswerable"]["agent"]["invented"].get(q, [])
        right = [sum(m.matches(agent[q], f.answers) for q in f.paraphrases) / 2 for f in stream.stable[1]]
        assert final["agent"]["heldout"][1] == pytest.approx(sum(right) / len(right))

    # The markdown shows the JSON's numbers: BWT on held-out wordings, recomputed from the naive cell's matrix.
    naive = cells["naive-ungated-s0"]
    bwt = _bwt([r["weights"]["heldout"] for r in naive["rounds"]])
    assert _row(md, "naive", "ungated", "## Accuracy matrix metrics, held-out wordings")[3] == f"{bwt:+.2f}"
    assert _row(md, "naive", "ungated", "## Summary")[7] == f"{bwt:+.2f}"
    group = summary["groups"]["naive|ungated"]["heldout_bwt"]
    assert group[0] == bwt and group[2] == 1

    # An ungated cell whose gated twin promoted every round is the same computation: measured here both ways.
    def measured(cell):
        return ([(r["weights"], r["general"], r["routes"]) for r in cell["rounds"]], cell["final"]["answers"])

    twins = [s for s in trained if all(r["consolidation"][0]["decision"] == "promoted"
                                       for r in cells[f"{s}-gated-s0"]["rounds"])]
    assert twins, "some strategy had every round promoted"
    for strategy in twins:
        assert measured(cells[f"{strategy}-gated-s0"]) == measured(cells[f"{strategy}-ungated-s0"]), strategy

    # A second run refuses to overwrite the saved cells; --resume keeps them, and (reusing by default) writes a
    # missing ungated cell from its twin instead of training it again.
    again = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=300)
    assert again.returncode == 2 and "--resume" in again.stderr
    cells_dir = tmp_path / "learning-quick" / "cells"
    (cells_dir / f"{twins[0]}-ungated-s0.json").unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in cells_dir.glob("*.json")}
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, env=child_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert stamps == {p.name: p.stat().st_mtime_ns for p in cells_dir.glob("*.json") if p.name in stamps}
    copy = json.loads((cells_dir / f"{twins[0]}-ungated-s0.json").read_text())
    assert copy["same_as"] == f"{twins[0]}-gated-s0" and measured(copy) == measured(cells[f"{twins[0]}-ungated-s0"])
    assert copy["policy"]["gate"]["min_new_accuracy"] == 0
    assert not math.isnan(summary["cells"]["naive-gated-s0"]["perplexity_change"])

    # --report-only rewrites the files from the saved cells, the base model's reference included.
    (tmp_path / "learning-quick.md").unlink()
    report = subprocess.run(command + ["--report-only"], capture_output=True, text=True, env=child_env(), timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    rewritten = (tmp_path / "learning-quick.md").read_text()
    assert f"(base: {base['perplexity']:.2f})" in rewritten and "nan" not in rewritten


@pytest.mark.slow  # ~20 s more, kept out of make test's 20-minute budget
def test_a_stream_without_paraphrases_reports_on_its_probe_wording(tmp_path, tiny_model_path):
    """SituatedQA-like data has no held-out wordings: the tables fall back to the probe wording, and nothing
    crashes on the empty held-out columns."""
    data = tmp_path / "facts.jsonl"
    facts = [("Which depot ships orders to Norvik?", "Bergmoor"), ("What colour is the Tallow tram?", "ochre"),
             ("Who runs the Pell kiosk?", "Ida Varn"), ("When does the Quay market open?", "7 am")]
    data.write_text("\n".join(json.dumps({"question": q, "answer": a, "date": f"2024-0{n + 1}-01"})
                              for n, (q, a) in enumerate(facts)) + "\n")
    command = [sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--quick", "--model", str(tiny_model_path),
               "--out", str(tmp_path), "--stream", "jsonl", "--data", str(data), "--facts-per-round", "2",
               "--strategies", "index", "naive", "--regimes", "gated"]
    done = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    md = (tmp_path / "learning-quick-jsonl.md").read_text()
    row = _row(md, "naive", "gated", "## Summary")
    assert "final (probe wording)" in md and row[6] != "-"
    assert (tmp_path / "learning-quick-jsonl-round1.png").is_file()

