"""examples/locomo.py's parts, on a tiny made-up conversation in LoCoMo's format (the real data is CC BY-NC and
never enters the repository): session parsing, evidence ids, LoCoMo's scores, question picking, the full-context
window, consolidation points, its policy and its command line; and its shared-context answering, on the tiny
in-process model (no pretrained one)."""
from __future__ import annotations

import importlib.util
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import tiny_lm

from engramma.policies import parse_policy

PATH = Path(__file__).resolve().parents[1] / "examples" / "locomo.py"


@pytest.fixture(scope="module")
def locomo():
    spec = importlib.util.spec_from_file_location("locomo_example", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


# Invented people and lines, shaped like locomo10.json: session_N keys (N not zero-padded, so 10 sorts after 2
# only numerically), a date per session, an empty session, a photo caption, category 5 with its trap answer.
CONVERSATION = {
    "speaker_a": "Ana",
    "speaker_b": "Ben",
    "session_1_date_time": "9:15 am on 3 March, 2022",
    "session_1": [
        {"speaker": "Ana", "dia_id": "D1:1", "text": "I adopted a grey cat called Pixel yesterday."},
        {"speaker": "Ben", "dia_id": "D1:2", "text": "Lovely! I started learning the cello.",
         "img_url": ["https://example.invalid/cello.jpg"], "blip_caption": "a photo of a cello on a chair"},
    ],
    "session_2_date_time": "6:40 pm on 20 March, 2022",
    "session_2": [
        {"speaker": "Ana", "dia_id": "D2:1", "text": "Pixel knocked my plant over."},
        {"speaker": "Ben", "dia_id": "D2:2", "text": "My cello teacher is from Lisbon."},
    ],
    "session_3_date_time": "1:00 pm on 2 April, 2022",
    "session_3": [],
    "session_10_date_time": "8:05 pm on 1 May, 2022",
    "session_10": [
        {"speaker": "Ana", "dia_id": "D10:01", "text": "We moved to Porto last week."},
    ],
}
QA = [
    {"question": "What is the name of Ana's cat?", "answer": "Pixel", "evidence": ["D1:1"], "category": 4},
    {"question": "When did Ana adopt her cat?", "answer": "2 March 2022", "evidence": ["D1:1"], "category": 2},
    {"question": "What do Ana and Ben care for?", "answer": "a cat, a cello", "evidence": ["D1:1; D1:2"],
     "category": 1},
    {"question": "Where is Ben's teacher from?", "answer": "Lisbon", "evidence": ["D2:2"], "category": 4},
    {"question": "Would Ana like a dog?", "answer": "Maybe; she likes animals", "evidence": ["D1:1"],
     "category": 3},
    {"question": "What did Ben's cat knock over?", "adversarial_answer": "a plant", "evidence": ["D2:1"],
     "category": 5},
    {"question": "Where did they move?", "answer": "Porto", "evidence": ["D10:1"], "category": 4},
]


def test_category_names_follow_locomos_evaluator(locomo):
    assert locomo.CATEGORIES == {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop",
                                 5: "adversarial"}


def test_sessions_are_read_in_numeric_order_with_their_dates(locomo):
    sessions = locomo.sessions_of(CONVERSATION)
    assert [s.number for s in sessions] == [1, 2, 10]  # the empty session 3 is left out
    assert sessions[0].when == datetime(2022, 3, 3, 9, 15, tzinfo=timezone.utc)
    assert sessions[2].when == datetime(2022, 5, 1, 20, 5, tzinfo=timezone.utc)
    first, second = sessions[0].turns
    assert first.text == "Ana: I adopted a grey cat called Pixel yesterday."
    assert second.text.endswith("[shares a photo: a photo of a cello on a chair]")
    assert [t.dia_id for t in sessions[2].turns] == ["D10:1"]  # a zero-padded turn number, normalised


@pytest.mark.parametrize("raw, expected", [
    (["D1:3"], ["D1:3"]),
    (["D8:6; D9:17"], ["D8:6", "D9:17"]),
    (["D9:1 D4:4 D4:6"], ["D9:1", "D4:4", "D4:6"]),
    (["D22:1 D22:2", "D9:10"], ["D22:1", "D22:2", "D9:10"]),
    (["D30:05"], ["D30:5"]),
    (["D:11:26"], ["D11:26"]),
    (["D"], []),
    (["D1:3", "D1:03", ""], ["D1:3"]),
    ([], []),
])
def test_evidence_ids_are_split_and_normalised(locomo, raw, expected):
    assert locomo.evidence_ids(raw) == expected


def test_answers_are_normalised_like_locomos_evaluator(locomo):
    assert locomo.normalise_answer("The  Cat, and a Dog!") == "cat dog"
    assert locomo.token_f1("Pixel.", "pixel") == 1.0
    assert locomo.token_f1("the grey cat Pixel", "Pixel") == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))
    assert locomo.token_f1("Lisbon", "Porto") == 0.0
    assert locomo.token_f1("", "Porto") == 0.0


def test_stemming_when_nltk_is_there(locomo):
    pytest.importorskip("nltk")
    assert locomo.STEMMED and locomo.token_f1("paints", "painting") == 1.0


def test_scores_per_category(locomo):
    # 1 multi-hop: each gold part against the best answer part
    assert locomo.score(1, "a cello, a cat", "a cat, a cello") == 1.0
    assert locomo.score(1, "a cat", "a cat, a cello") == 0.5
    # 3 open-domain: the gold answer before its ';'
    assert locomo.score(3, "maybe", "Maybe; she likes animals") == 1.0
    # 2 and 4: token F1 of the whole answer
    assert locomo.score(2, "2 March 2022", "2 March 2022") == 1.0
    assert locomo.score(4, "Lisbon, Portugal", "Lisbon") == pytest.approx(2 / 3)
    # 5 adversarial: declining is right, the trap answer is wrong
    assert locomo.score(5, "That is not mentioned in the conversation.", None) == 1.0
    assert locomo.score(5, "No information available", None) == 1.0
    assert locomo.score(5, "a plant", None) == 0.0


def test_gold_answers_and_containment(locomo):
    assert locomo.gold_answer(QA[5]) is None  # category 5 never scores against its adversarial_answer
    assert locomo.gold_answer({"answer": 2022, "category": 2}) == "2022"
    assert locomo.contains(4, "Ben's teacher is from Lisbon.", "Lisbon")
    assert not locomo.contains(4, "Lisbonne", "Lisbon")  # whole words only
    assert locomo.contains(3, "Maybe, yes", "Maybe; she likes animals")
    assert locomo.contains(5, "Not mentioned.", None) and not locomo.contains(5, "a plant", None)


def test_questions_are_taken_in_turn_from_each_category(locomo):
    picked = locomo.pick_questions(QA, [1, 2, 3, 4, 5], 5)
    assert sorted(q["category"] for q in picked) == [1, 2, 3, 4, 5]
    assert picked == sorted(picked, key=QA.index)  # file order kept
    assert [q["category"] for q in locomo.pick_questions(QA, [4], 0)] == [4, 4, 4]
    early = locomo.pick_questions(QA, [4, 5], 0, sessions={1, 2})
    assert [q["question"] for q in early] == [QA[0]["question"], QA[3]["question"], QA[5]["question"]]


def test_recalled_turns_are_dated_and_in_conversation_order(locomo):
    sessions = locomo.sessions_of(CONVERSATION)
    turns = [sessions[2].turns[0], sessions[0].turns[1], sessions[0].turns[0]]
    assert locomo.recalled_context(turns).splitlines() == [
        "[3 March 2022] Ana: I adopted a grey cat called Pixel yesterday.",
        "[3 March 2022] Ben: Lovely! I started learning the cello. [shares a photo: a photo of a cello on a chair]",
        "[1 May 2022] Ana: We moved to Porto last week.",
    ]


def words(text: str) -> int:
    return len(text.split())


def test_the_full_conversation_when_it_fits(locomo):
    sessions = locomo.sessions_of(CONVERSATION)
    text, shown, fits = locomo.conversation_window(sessions, 1000, words)
    assert fits and shown == {"D1:1", "D1:2", "D2:1", "D2:2", "D10:1"}
    assert text.splitlines()[0] == "Session 1, 3 March 2022:" and "Session 10, 1 May 2022:" in text


def test_else_the_latest_turns_that_fit(locomo):
    sessions = locomo.sessions_of(CONVERSATION)
    # Session 10 (header 5 words + a newline, its turn 7 + 1) and session 2's header and last turn (5 + 1, 7 + 1)
    # fill 28 exactly; session 2's first turn no longer fits.
    text, shown, fits = locomo.conversation_window(sessions, 28, words)
    assert not fits and words(text) <= 28
    assert shown == {"D2:2", "D10:1"}
    assert text.splitlines() == ["Session 2, 20 March 2022:", "Ben: My cello teacher is from Lisbon.",
                                 "Session 10, 1 May 2022:", "Ana: We moved to Porto last week."]
    assert locomo.conversation_window(sessions, 3, words)[:2] == ("", set())


def test_shared_prefix_leaves_one_token_to_generate_from(locomo):
    assert locomo.shared_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert locomo.shared_prefix([[1, 2, 3], [1, 2, 3]]) == 2
    assert locomo.shared_prefix([[7, 1], [8, 1]]) == 0


def test_paired_difference_and_its_interval(locomo):
    mean, half = locomo.paired_difference([0.0, 0.5, 1.0, 0.5], [0.5, 0.5, 1.0, 1.0])
    assert mean == pytest.approx(0.25)
    assert half == pytest.approx(1.96 * (1 / 12) ** 0.5 / 2)  # sample variance of (0.5, 0, 0, 0.5) is 1/12
    assert locomo.paired_difference([0.2, 0.4], [0.2, 0.4]) == (0.0, 0.0)


@pytest.mark.parametrize("every, expected", [(1, {1, 2, 10}), (2, {2, 10}), (5, {10}), (0, {10})])
def test_consolidation_runs_every_n_sessions_and_after_the_last(locomo, every, expected):
    assert locomo.consolidation_points([1, 2, 10], every) == expected


def test_the_examples_policy_is_valid(locomo):
    policy = parse_policy(locomo.POLICY.replace("MODEL", "smollm2-135m-instruct"), "examples/locomo.py")
    assert policy.name == "locomo-agent"


def test_every_flag_is_documented(locomo):
    parser = locomo.build_parser()
    text = parser.format_help()
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"
        assert all(option in text for option in action.option_strings)


def test_bad_arguments_fail_before_any_model_loads(locomo, tmp_path, capsys):
    with pytest.raises(SystemExit):
        locomo.parse_args(["--data", "x.json", "--k", "0"])
    assert "--k: must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no such file"):
        locomo.main(["--data", str(tmp_path / "missing.json")])


def test_questions_on_one_context_share_its_cache_and_answer_as_if_asked_alone(locomo, tiny):
    context = "Session 1, 3 March 2022:\nAna: I adopted a grey cat called Pixel.\nBen: I play the cello."
    # Questions the tiny model answers differently (projects it knows from pretraining), so that equal answers
    # together and alone say the shared cache changed nothing, not that every question got the same reply.
    known = [f"What is the colour of project {name}?" for name in tiny_lm.BACKGROUND[:3]]
    asks = [(context, known[0]), (context, known[1]), (context, known[2]),
            ("Session 2, 20 March 2022:\nAna: We moved.", "Where did they move?")]
    together = locomo.answer_all(tiny.model, tiny.tokenizer, asks, max_new_tokens=8, label="shared")
    alone = [locomo.answer_all(tiny.model, tiny.tokenizer, [ask], max_new_tokens=8, label="alone")[0] for ask in asks]
    assert together == alone and len(set(together[:3])) > 1
