"""Official VQA accuracy: normalisation edge cases, leave-one-out arithmetic, upstream quirks, file errors."""
import json
from pathlib import Path

import pytest
from vqa_traps import trap_set

from mmgpt.data.example import Example
from mmgpt.eval.vqa import official_files
from mmgpt.eval.vqa_metrics import _round, load_vqa_files, normalize_answer, vqa_score


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"), ("ten", "10"), ("none", "0"),
    ("a dog.", "dog"), ("The Dog", "dog"), ("an apple", "apple"),
    ("dont", "don't"), ("isnt", "isn't"), ("youre", "you're"),
    ("Im", "im"),  # the table's capitalised keys never match lowercased text
    ("yes!", "yes"), ("yes.", "yes"), (" yes\n", "yes"), ("what?", "what"),
    ("3.5", "3.5"),  # a period before a digit survives
    ("e.g.", "eg"),
    ("1,000", "1000"),  # a digit,digit comma makes every symbol vanish instead of becoming a space
    ("t-shirt", "t shirt"), ("yes, it is", "yes it is"),  # "x-y" splits; a spaced symbol is deleted
    ("a / b", "b"),  # "/" is spaced, so deleted; "a" is then an article
    ("black & white", "black & white"),  # "&" is not in the list
    ("somebody'd", "somebodyd"),  # upstream's contraction table, typo included
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def one_question(answers, prediction, ids=True, qtype="what is", atype="other", version="2017"):
    records = [{"answer": a, "answer_confidence": "yes", **({"answer_id": i + 1} if ids else {})}
               for i, a in enumerate(answers)]
    questions = {"questions": [{"question_id": 1, "image_id": 0, "question": "q?"}]}
    annotations = {"annotations": [{"question_id": 1, "image_id": 0, "question_type": qtype, "answer_type": atype,
                                    "multiple_choice_answer": answers[0], "answers": records}]}
    return vqa_score(questions, annotations, [{"question_id": 1, "answer": prediction}], version=version)


@pytest.mark.parametrize("matching, expected", [(0, 0.0), (1, 30.0), (2, 60.0), (3, 90.0), (4, 100.0)])
def test_leave_one_out_accuracy(matching, expected):
    # 2 of 10: leaving out a match (2 ways) leaves 1 -> 1/3; leaving out another (8 ways) leaves 2 -> 2/3;
    # mean = (2/3 + 16/3) / 10 = 0.6. Likewise 1 -> (9 * 1/3) / 10 = 0.3 and 3 -> (3 * 2/3 + 7) / 10 = 0.9
    answers = ["cat"] * matching + ["dog"] * (10 - matching)
    assert one_question(answers, "cat")["overall"] == expected


def test_prediction_always_normalised_humans_only_by_punctuation():
    # the 2017 evaluator (challenge server, LAVIS): the prediction is always normalised...
    assert one_question(["yes"] * 10, "Yes")["overall"] == 100.0
    assert one_question(["2"] * 10, "two")["overall"] == 100.0
    assert one_question(["yes"] * 9 + ["no"], "Yes!")["overall"] == 100.0
    # ...the human answers get the punctuation step only, and only when they differ
    assert one_question(["Yes"] * 10, "Yes")["overall"] == 0.0
    assert one_question(["two"] * 5 + ["2"] * 5, "two")["overall"] == 100.0  # "two" -> "2" matches the five "2"
    assert one_question(["yes!"] * 10, "yes!")["overall"] == 0.0  # identical humans stay raw
    assert one_question(["yes!"] * 9 + ["no"], "yes")["overall"] == 0.0  # "yes!" -> "yes " (no strip)
    assert one_question(["yes,"] * 9 + ["no"], "yes")["overall"] == 0.0
    assert one_question(["t-shirt"] * 9 + ["no"], "t shirt")["overall"] == 100.0


def test_version_2021_normalises_both_sides_only_when_humans_differ():
    assert one_question(["yes"] * 10, "Yes", version="2021")["overall"] == 0.0
    assert one_question(["yes"] * 10, "  yes\t", version="2021")["overall"] == 100.0
    assert one_question(["Yes!"] * 9 + ["no"], "yes", version="2021")["overall"] == 100.0
    with pytest.raises(ValueError, match="unknown VQA evaluator version '2019'; available: 2017, 2021"):
        one_question(["yes"] * 10, "yes", version="2019")


OFFICIAL = json.loads((Path(__file__).parent / "data" / "vqa_official.json").read_text())


@pytest.mark.parametrize("expected", OFFICIAL["sets"], ids=lambda e: f"seed{e['seed']}-{e['version']}")
def test_equals_official_evaluator_on_trap_sets(expected):
    questions, annotations, results = trap_set(expected["seed"], expected["num_questions"])
    scores = vqa_score(questions, annotations, results, version=expected["version"])
    assert scores["overall"] == expected["overall"]
    assert scores["perAnswerType"] == expected["perAnswerType"]
    assert scores["perQuestionType"] == expected["perQuestionType"]
    if "perQuestion" in expected:
        assert {str(k): v for k, v in scores["perQuestion"].items()} == expected["perQuestion"]


def test_rounding_equals_python2_round():
    for value, rounded in OFFICIAL["round"]:
        assert _round(float(value), 2) == rounded, value


def test_identical_answer_records_cancel_out():
    # upstream leaves out every record equal to the held-out one, so id-less duplicates never match
    assert one_question(["yes"] * 10, "yes", ids=False)["overall"] == 0.0


def test_breakdowns_and_rounding():
    questions = {"questions": [{"question_id": q, "image_id": 0, "question": "q?"} for q in (1, 2, 3)]}
    anns = [{"question_id": q, "image_id": 0, "question_type": t, "answer_type": a, "multiple_choice_answer": "x",
             "answers": [{"answer": ans, "answer_id": i} for i, ans in enumerate(answers)]}
            for q, t, a, answers in [(1, "how many", "number", ["2"] * 3 + ["3"] * 7),
                                     (2, "how many", "number", ["4"] * 10),
                                     (3, "is the", "yes/no", ["yes"] * 5 + ["no"] * 5)]]
    results = [{"question_id": 1, "answer": "two"}, {"question_id": 2, "answer": "4"},
               {"question_id": 3, "answer": "no"}]
    scores = vqa_score(questions, {"annotations": anns}, results)
    assert scores["perQuestion"] == {1: 90.0, 2: 100.0, 3: 100.0}
    assert scores["overall"] == 96.67  # 100 * 2.9 / 3 = 96.666...
    assert scores["perQuestionType"] == {"how many": 95.0, "is the": 100.0}
    assert scores["perAnswerType"] == {"number": 95.0, "yes/no": 100.0}
    assert _round(0.125, 2) == 0.13 and _round(2.675, 2) == 2.67  # Python 2 round(): exact ties away from 0


def test_official_files_count_a_single_answer_ten_times():
    questions, annotations, ids = official_files([Example(image="x.png", prompt="color?", answer="red", id=5)])
    assert ids == [5]
    assert questions["questions"][0] == {"question_id": 5, "image_id": 0, "question": "color?"}
    for header in (questions, annotations):  # the fields the official VQA API copies from a questions file
        assert {"info", "task_type", "data_type", "data_subtype", "license"} <= set(header)
    answers = annotations["annotations"][0]["answers"]
    assert [a["answer"] for a in answers] == ["red"] * 10
    assert len({a["answer_id"] for a in answers}) == 10
    assert vqa_score(questions, annotations, [{"question_id": 5, "answer": "red"}])["overall"] == 100.0
    assert vqa_score(questions, annotations, [{"question_id": 5, "answer": "The Red."}])["overall"] == 100.0
    assert vqa_score(questions, annotations, [{"question_id": 5, "answer": "reds"}])["overall"] == 0.0


@pytest.fixture
def files(tmp_path):
    questions, annotations, _ = official_files(
        [Example(image="x.png", prompt="q?", answer="yes", id=q, meta={"question_type": "is", "answer_type": "yes/no"})
         for q in (1, 2)])
    paths = {}
    for name, obj in [("q.json", questions), ("a.json", annotations),
                      ("r.json", [{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "no"}])]:
        paths[name] = tmp_path / name
        paths[name].write_text(json.dumps(obj))
    return paths


def test_load_vqa_files_ok(files):
    questions, annotations, results = load_vqa_files(files["r.json"], files["q.json"], files["a.json"])
    assert vqa_score(questions, annotations, results)["overall"] == 50.0


@pytest.mark.parametrize("name, content, message", [
    ("r.json", "[{", "not valid JSON"),
    ("r.json", [{"question_id": 1, "answer": "yes"}], r"1 missing \(e.g. \[2\]\)"),
    ("r.json", [{"question_id": q, "answer": "yes"} for q in (1, 2, 9)], r"1 not in .*a.json \(e.g. \[9\]\)"),
    ("r.json", [{"question_id": 1, "answer": "yes"}] * 2, "duplicate question_id 1"),
    ("r.json", [{"question_id": 1}, {"question_id": 2, "answer": "x"}], r"results\[0\] has no 'answer'"),
    ("r.json", [{"question_id": 1, "answer": 3}, {"question_id": 2, "answer": "x"}], r"results\[0\].answer"),
    ("r.json", {"question_id": 1}, "expected a list"),
    ("q.json", {"question": []}, "has no 'questions'"),
    ("a.json", {"annotations": [{"question_id": 1, "image_id": 0, "question_type": "x", "answer_type": "y"}]},
     r"annotations\[0\] has no 'answers'"),
    ("a.json", {"annotations": [{"question_id": 1, "image_id": 0, "question_type": "x", "answer_type": "y",
                                 "answers": [{"answer_id": 1}]}]}, r"annotations\[0\].answers\[0\] has no 'answer'"),
])
def test_load_vqa_files_errors(files, name, content, message):
    files[name].write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=message) as err:
        load_vqa_files(files["r.json"], files["q.json"], files["a.json"])
    assert name in str(err.value)
