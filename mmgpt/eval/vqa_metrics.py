"""The official VQA accuracy (VQA v2 challenge evaluator, `vqaEval.py`) in plain Python.

Accuracy of an answer = mean over the 10 leave-one-out subsets of the human answers of min(#matches / 3, 1).
Two official versions exist and differ in what gets normalised; both are here, the first is the default:
- "2017" (GT-Vision-Lab/VQA v2.0 release; the same code in Cloud-CV/VQA-Evaluation, which the challenge
  server runs, and in LAVIS): the prediction is always cleaned (newline/tab -> space, strip) and normalised
  (punctuation, then lower-case, number words, articles, contractions); the human answers are left as they
  are, except that when they are not all identical each gets the punctuation step only (no whitespace
  cleaning, no lower-casing, no digit/article step). So "Two" scores 100 against ten "2", and ten "Yes"
  can never be matched.
- "2021" (GT-Vision-Lab/VQA after its 2021 "processing answers" commit): both sides are whitespace-cleaned,
  and both get both steps, but only when the human answers differ; when all ten agree the cleaned
  prediction must equal them exactly.
Quirks kept on purpose, since they change the numbers:
- the period regex's look-behind is mistyped upstream, so only a following digit protects a period, and at
  most 32 periods are removed (re.UNICODE is passed where `count` goes);
- a digit,digit comma anywhere, or a symbol next to a space, makes every listed symbol vanish instead of
  turning into a space (the test reads the original text);
- "leave one out" drops every answer record equal to the held-out one, so answer records need distinct
  answer_ids (ten identical records would score 0);
- scores are on the 0-100 scale, rounded to `n` (default 2) decimals as upstream's Python 2 round() does:
  exact ties go away from zero (Python 3's round() would send them to the even digit).
"""
from __future__ import annotations

import logging
import os
import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from mmgpt.jsonfile import read_json_file

logger = logging.getLogger(__name__)

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # the upstream table, oddities included ("somebody'd" -> "somebodyd"; capitalised keys never match)
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset(["a", "an", "the"])
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # upstream's mistyped look-behind, kept: it never applies
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_MAX_PERIODS_STRIPPED = 32  # upstream passes re.UNICODE (== 32) as the `count` argument of sub()


def _round(value: float, n: int) -> float:
    # Decimal(value) is the exact binary value, so only true ties round differently from Python 3
    return float(Decimal(value).quantize(Decimal(1).scaleb(-n), rounding=ROUND_HALF_UP))


VERSIONS = ("2017", "2021")


def _clean(answer: str) -> str:
    return answer.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    out = text
    # the test looks at the original text, so one spaced symbol makes every symbol vanish rather than split
    glue = _COMMA_STRIP.search(text) is not None
    for p in PUNCTUATION:
        out = out.replace(p, "" if (p + " " in text or " " + p in text or glue) else " ")
    return _PERIOD_STRIP.sub("", out, count=_MAX_PERIODS_STRIPPED)


def _process_digit_article(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(answer: str) -> str:
    """The official normalisation of a predicted answer.

    Whitespace, punctuation, number words, articles, contractions.
    """
    return _process_digit_article(_process_punctuation(_clean(answer)))


def _check_version(version: str) -> str:
    if version not in VERSIONS:
        raise ValueError(f"unknown VQA evaluator version {version!r}; available: {', '.join(VERSIONS)}")
    return version


def _question_accuracy(answers: list[dict], prediction: str, version: str = "2017") -> float:
    """Leave-one-out accuracy of one prediction against the human answer records, as the chosen version does."""
    if version == "2017":
        gts = list(answers)
        prediction = normalize_answer(prediction)
        if len({a["answer"] for a in gts}) > 1:
            gts = [dict(a, answer=_process_punctuation(a["answer"])) for a in gts]
    else:
        gts = [dict(a, answer=_clean(a["answer"])) for a in answers]
        prediction = _clean(prediction)
        if len({a["answer"] for a in gts}) > 1:
            gts = [dict(a, answer=_process_digit_article(_process_punctuation(a["answer"]))) for a in gts]
            prediction = _process_digit_article(_process_punctuation(prediction))
    accs = []
    for held_out in gts:
        # upstream compares whole answer records here, not positions
        matches = sum(1 for other in gts if other != held_out and other["answer"] == prediction)
        accs.append(min(1.0, matches / 3.0))
    return float(sum(accs)) / len(accs)


def _require(obj: Any, field: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or field not in obj:
        raise ValueError(f"{where} has no '{field}'")
    if not isinstance(obj[field], kind):
        raise ValueError(f"{where}.{field} has the wrong type ({type(obj[field]).__name__})")
    return obj[field]


def _validate(questions: Any, annotations: Any, results: Any, names: tuple[str, str, str]
              ) -> tuple[dict[Any, dict], dict[Any, str]]:
    """Check the three official structures; return annotations and answers by question id (annotation order)."""
    q_name, a_name, r_name = names
    qid_kind = (int, str)
    for i, q in enumerate(_require(questions, "questions", list, q_name)):
        _require(q, "question_id", qid_kind, f"{q_name}: questions[{i}]")
        _require(q, "question", str, f"{q_name}: questions[{i}]")
    anns: dict[Any, dict] = {}
    for i, ann in enumerate(_require(annotations, "annotations", list, a_name)):
        where = f"{a_name}: annotations[{i}]"
        qid = _require(ann, "question_id", qid_kind, where)
        for field in ("image_id", "question_type", "answer_type"):
            _require(ann, field, (int, str) if field == "image_id" else str, where)
        answers = _require(ann, "answers", list, where)
        if not answers:
            raise ValueError(f"{where}.answers is empty")
        for j, a in enumerate(answers):
            _require(a, "answer", str, f"{where}.answers[{j}]")
        if qid in anns:
            raise ValueError(f"{where}: duplicate question_id {qid!r}")
        anns[qid] = ann
    if not isinstance(results, list):
        raise ValueError(f"{r_name}: expected a list of {{'question_id', 'answer'}} objects")
    answers_by_qid: dict[Any, str] = {}
    for i, res in enumerate(results):
        qid = _require(res, "question_id", qid_kind, f"{r_name}: results[{i}]")
        answer = _require(res, "answer", str, f"{r_name}: results[{i}]")
        if qid in answers_by_qid:
            raise ValueError(f"{r_name}: results[{i}]: duplicate question_id {qid!r}")
        answers_by_qid[qid] = answer
    missing = [q for q in anns if q not in answers_by_qid]
    unknown = [q for q in answers_by_qid if q not in anns]
    if missing or unknown:  # upstream asserts set(result ids) == set(annotation ids)
        raise ValueError(f"{r_name}: results must answer exactly the annotated questions: {len(missing)} missing "
                         f"(e.g. {missing[:5]}), {len(unknown)} not in {a_name} (e.g. {unknown[:5]})")
    asked = {q["question_id"] for q in questions["questions"]}
    unasked = [q for q in anns if q not in asked]
    if unasked:
        logger.warning("%d annotated questions are not in %s (e.g. %s); scored anyway, as upstream does",
                       len(unasked), q_name, unasked[:5])
    return anns, answers_by_qid


def vqa_score(questions: dict, annotations: dict, results: list[dict], n: int = 2, version: str = "2017") -> dict:
    """Official VQA accuracy: {"overall", "perAnswerType", "perQuestionType", "perQuestion"} on 0-100."""
    _check_version(version)
    anns, answers = _validate(questions, annotations, results, ("questions", "annotations", "results"))
    accs: list[float] = []
    by_qtype: dict[str, list[float]] = {}
    by_atype: dict[str, list[float]] = {}
    per_question: dict[Any, float] = {}
    for qid, ann in anns.items():
        acc = _question_accuracy(ann["answers"], answers[qid], version)
        accs.append(acc)
        by_qtype.setdefault(ann["question_type"], []).append(acc)
        by_atype.setdefault(ann["answer_type"], []).append(acc)
        per_question[qid] = _round(100 * acc, n)
    if not accs:
        raise ValueError("annotations: no questions to score")

    def mean(values: list[float]) -> float:
        return _round(100 * float(sum(values)) / len(values), n)

    return {"overall": mean(accs), "perAnswerType": {k: mean(v) for k, v in by_atype.items()},
            "perQuestionType": {k: mean(v) for k, v in by_qtype.items()}, "perQuestion": per_question}


def load_vqa_files(results_path: str | os.PathLike, questions_path: str | os.PathLike,
                   annotations_path: str | os.PathLike) -> tuple[dict, dict, list[dict]]:
    """Read and check official VQA results, questions and annotations files: (questions, annotations, results)."""
    questions, annotations, results = (read_json_file(p) for p in (questions_path, annotations_path, results_path))
    _validate(questions, annotations, results, (str(questions_path), str(annotations_path), str(results_path)))
    return questions, annotations, results


def official_header(**body: Any) -> dict:
    """The top-level fields the official VQA API copies from a questions file (`loadRes` reads them), plus `body`."""
    return {"info": {"description": "written by mmgpt"}, "task_type": "Open-Ended", "data_type": "mmgpt",
            "data_subtype": "eval", "license": {"name": "see the dataset"}, **body}
