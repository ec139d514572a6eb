"""Seeded VQA sets full of the official evaluator's traps, for checking parity against its recorded numbers.

The sets mix questions whose ten human answers agree with ones where they differ, and predictions that
differ from the answers only by what the official normalisation does or does not undo: capitals, number
words, articles, punctuation (spaced, glued, inside numbers), contractions, stray whitespace, and answer
records without ids (which upstream's record-wise leave-one-out treats as equal).
"""
from __future__ import annotations

import random

ANSWER_POOLS = [
    ["2", "two", "Two", "2.", "3", "1,000", "1000", "3.5", "10", "ten", "none", "0"],
    ["yes", "Yes", "yes!", "yes.", "no", "No", " yes", "yes\n", "\tno", "no way"],
    ["dog", "a dog", "the dog", "Dog", "dogs", "an apple", "apple", "the apple."],
    ["t-shirt", "t shirt", "tshirt", "black & white", "black and white", "left/right", "left right",
     "a / b", "(red)", "red", "e.g.", "eg", "red, white", "red white"],
    ["dont", "don't", "isnt", "isn't", "Im", "I'm", "youre", "you're", "somebody'd", "somebodyd"],
    ["café", "Café", "cafe", "naïve", "naive"],
]
QUESTION_TYPES = [("how many", "number"), ("is the", "yes/no"), ("what is", "other"), ("what color", "other")]


def _perturb(rng: random.Random, text: str) -> str:
    """A prediction near `text`: one or two edits the normalisation may or may not undo."""
    edits = [
        lambda t: t.capitalize(), lambda t: t.upper(), lambda t: "the " + t, lambda t: "a " + t,
        lambda t: t + ".", lambda t: t + "!", lambda t: t + " ?", lambda t: " " + t + "\n",
        lambda t: "\t" + t, lambda t: t.replace("'", ""), lambda t: t.replace(" ", "-"),
        lambda t: {"2": "two", "10": "ten", "0": "zero", "3": "three"}.get(t, t),
        lambda t: {"two": "2", "ten": "10", "none": "0"}.get(t, t), lambda t: t + ",",
        lambda t: t.replace("e", "e."), lambda t: t,
    ]
    for _ in range(rng.randint(0, 2)):
        text = rng.choice(edits)(text)
    return text


def trap_set(seed: int, num_questions: int) -> tuple[dict, dict, list[dict]]:
    """(questions, annotations, results) in the official file layouts, all derived from `seed`."""
    rng = random.Random(seed)
    questions, annotations, results = [], [], []
    for qid in range(1, num_questions + 1):
        pool = rng.choice(ANSWER_POOLS)
        qtype, atype = rng.choice(QUESTION_TYPES)
        if rng.random() < 0.4:
            answers = [rng.choice(pool)] * 10
        else:
            few = rng.sample(pool, k=min(len(pool), rng.randint(2, 4)))
            answers = [rng.choice(few) for _ in range(10)]
        with_ids = rng.random() > 0.1
        records = [{"answer": a, "answer_confidence": rng.choice(["yes", "maybe"]) if not with_ids else "yes",
                    **({"answer_id": i + 1} if with_ids else {})} for i, a in enumerate(answers)]
        image_id = rng.randint(0, num_questions // 3)
        questions.append({"question_id": qid, "image_id": image_id, "question": f"{qtype} question {qid}?"})
        annotations.append({"question_id": qid, "image_id": image_id, "question_type": qtype, "answer_type": atype,
                            "multiple_choice_answer": answers[0], "answers": records})
        base = rng.choice(answers) if rng.random() < 0.8 else rng.choice(pool)
        results.append({"question_id": qid, "answer": _perturb(rng, base)})
    header = {"info": {"description": f"vqa traps seed {seed}"}, "task_type": "Open-Ended",
              "data_type": "mscoco", "data_subtype": "traps", "license": {"name": "none"}}
    return dict(header, questions=questions), dict(header, annotations=annotations), results
