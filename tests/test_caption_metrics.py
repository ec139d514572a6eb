"""COCO caption metrics: hand-computed cases, tokenizer cases, official numbers on trap sets, loader errors."""
import json
import math
from pathlib import Path

import pytest
from caption_traps import trap_set

from mmgpt.eval import caption_metrics as cm
from mmgpt.eval.caption_metrics import (
    load_coco_annotations,
    load_coco_results,
    ptb_tokenize,
    ptb_tokenize_batch,
    score_captions,
)

OFFICIAL = json.loads((Path(__file__).parent / "data" / "caption_official.json").read_text())


@pytest.fixture(autouse=True)
def no_java_metrics(monkeypatch):
    # keep the tests hermetic and fast even where Java and pycocoevalcap's jars happen to be installed
    monkeypatch.setattr(cm, "available_java_metrics", lambda: [])


# Expected strings were printed by Stanford CoreNLP 3.4.1's PTBTokenizer (-preserveLines -lowerCase, the jar
# pycocoevalcap 1.2 ships) followed by pycocoevalcap's punctuation removal.
@pytest.mark.parametrize("text, expected", [
    ("A man riding a bike down the street.", "a man riding a bike down the street"),
    ("The dog's toy isn't here; it's \"there\" (under the table).",
     "the dog 's toy is n't here it 's there -lrb- under the table -rrb-"),
    ("A black-and-white photo of Mr. Smith at 5 p.m. in the U.S.",
     "a black-and-white photo of mr. smith at 5 p.m. in the u.s."),
    ("Two people--one man and one woman--are walking 3.5 miles, about 1,000 steps.",
     "two people one man and one woman are walking 3.5 miles about 1,000 steps"),
    ("I CANNOT believe we're gonna eat 1 1/2 pizzas!!", "i can not believe we 're gon na eat 1\xa01/2 pizzas !!"),
    ("Kids' toys [and] {stuff} and/or AT&T...", "kids toys -lsb- and -rsb- -lcb- stuff -rcb- and/or at&t"),
    ("hello :)", "hello -rrb-"),
    ("won't y'all rock'n'roll o'clock", "wo n't y' all rock 'n' roll o'clock"),
    ("It\u2019s a \u201cquoted\u201d caption \u2014 isn\u2019t it?", "it 's a quoted caption is n't it"),
    ("50% of $5", "50 % of $ 5"),
    ("", ""), ("   ", ""), ("...", ""), ("U.S.", "u.s."),
    # the toolkit rstrip()s each printed line, so a Unicode space the lexer kept at the end of a URL goes
    ("mail me at foo@bar.com\u3000", "mail me at foo@bar.com"), ("see www.example.com\u202f", "see www.example.com"),
    ("a@b.org\x1f", "a@b.org"),
    # letters and digits newer than the lexer's Unicode 6.2 are deleted; U+1885 was a letter in 6.2
    ("the \u037fes sign", "the es sign"), ("\ua7aa\ua7ab", "\u0266"), ("\u1c90 word", "word"),
    ("5\ua9f1 and \u0de7", "5 and"), ("\u1885x", "\u1885x"), ("\u08a0\u08a1", "\u08a0"),
])
def test_ptb_tokenize_matches_stanford(text, expected):
    assert ptb_tokenize(text) == expected


def test_tokenizer_sees_the_next_caption_like_the_java_stream():
    # the lexer's look-ahead crosses lines: "A." before "The" loses its period, alone it keeps it;
    # a smiley needs one more character after it, which the next line's newline provides
    assert ptb_tokenize_batch(["the letter A.", "The end"]) == ["the letter a", "the end"]
    assert ptb_tokenize("the letter A.") == "the letter a."
    assert ptb_tokenize_batch(["nice :)", "x"]) == ["nice :-rrb-", "x"]


def test_bleu_by_hand():
    # hyp "the cat sat on the mat" vs ref "the cat is on the mat" (both 6 words, so no brevity penalty):
    # matches 1-gram 5/6, 2-gram 3/5 (the cat, on the, the mat), 3-gram 1/4 (on the mat), 4-gram 0/3
    # BLEU-1 = 5/6, BLEU-2 = sqrt(5/6*3/5) = sqrt(1/2), BLEU-3 = (5/6*3/5*1/4)^(1/3) = 1/2, BLEU-4 ~ 0
    metrics, per_image = score_captions({1: ["the cat is on the mat"]}, {1: "the cat sat on the mat"})
    assert metrics["Bleu_1"] == pytest.approx(5 / 6, abs=1e-9)
    assert metrics["Bleu_2"] == pytest.approx(math.sqrt(0.5), abs=1e-9)
    assert metrics["Bleu_3"] == pytest.approx(0.5, abs=1e-9)
    assert metrics["Bleu_4"] < 1e-4  # only the toolkit's 1e-15 smoothing keeps it above 0
    assert per_image[1]["Bleu_3"] == pytest.approx(0.5, abs=1e-9)


def test_bleu_brevity_penalty_and_closest_length():
    # 2 words against 6: BP = exp(1 - 6/2) = exp(-2), every n-gram of the hypothesis matches
    metrics, _ = score_captions({1: ["the cat is on the mat"]}, {1: "the cat"})
    assert metrics["Bleu_1"] == pytest.approx(math.exp(-2), rel=1e-8)
    assert metrics["Bleu_2"] == pytest.approx(math.exp(-2), rel=1e-8)
    # references of 3 and 7 words are equally close to 5: the shorter wins, so no penalty (with 7 it'd be 0.67)
    metrics, _ = score_captions({1: ["a b c", "a b c d e f g"]}, {1: "a b c d e"})
    assert metrics["Bleu_1"] == pytest.approx(1.0, abs=1e-9)


def test_bleu_is_corpus_level_not_a_mean():
    metrics, per_image = score_captions({1: ["a b"], 2: ["x y"]}, {1: "a b", 2: "c d"})
    assert metrics["Bleu_1"] == pytest.approx(0.5, abs=1e-9)  # (2 + 0) matches / (2 + 2) words
    assert per_image[1]["Bleu_1"] == pytest.approx(1.0, abs=1e-9)
    assert per_image[2]["Bleu_1"] < 1e-9


def test_rouge_l_by_hand():
    # LCS("the cat sat on the mat", "the cat on mat") = 4: P = 4/6, R = 4/4 (best over references)
    # F = (1 + 1.2^2) P R / (R + 1.2^2 P) = 2.44 * 2/3 / 1.96
    metrics, _ = score_captions({1: ["the cat on mat", "a dog"]}, {1: "the cat sat on the mat"})
    assert metrics["ROUGE_L"] == pytest.approx(2.44 * (2 / 3) / 1.96, abs=1e-12)
    assert cm._lcs("a b c d e".split(), "x b y d".split()) == 2


def test_cider_d_by_hand():
    # two images, idf = ln(2) - ln(1) for every reference word. Image 1 "cat" vs "cat": unigram cosine 1,
    # no bigram..4-gram vectors, so 10 * mean([1, 0, 0, 0]) = 2.5. Image 2 "dog dog" vs "dog": the clipped
    # unigram product is min(2 ln2, ln2) * ln2 over norms 2 ln2 * ln2 = 0.5, times the length penalty
    # exp(-1^2 / (2 * 6^2)) for one extra word: 10 * 0.5 * exp(-1/72) / 4
    metrics, per_image = score_captions({1: ["cat"], 2: ["dog"]}, {1: "cat", 2: "dog dog"})
    image2 = 10 * 0.5 * math.exp(-1 / 72) / 4
    assert per_image[1]["CIDEr"] == pytest.approx(2.5, abs=1e-12)
    assert per_image[2]["CIDEr"] == pytest.approx(image2, abs=1e-12)
    assert metrics["CIDEr"] == pytest.approx((2.5 + image2) / 2, abs=1e-12)


# Obtained from pycocoevalcap 1.2 with Java (COCOEvalCap.evaluate, real Stanford PTBTokenizer), on these captions.
PINNED_REFS = {
    11: ["A man riding a bike down the street.", "A man rides his bicycle on a city street.",
         "A cyclist, wearing a helmet, rides down the road.", "Man on a bike in traffic -- near a bus."],
    22: ["Two dogs playing with a frisbee in the park.", "Two dogs' toys: a red frisbee & a ball!",
         "A pair of dogs chase a frisbee on the grass.", "TWO DOGS PLAYING IN A PARK", "dogs playing"],
    33: ["A pizza with cheese and pepperoni on a plate.", "A pepperoni pizza isn't cut yet.",
         "Close-up of a \"large\" pizza (with olives).", "It's a pizza on a white plate.",
         "A 12-inch pizza sitting on the table."],
    44: ["A black-and-white photo of Mr. Smith at 5 p.m. in the U.S.", "An old photo of a man in a suit.",
         "A man in a hat ... standing near a car.", "Vintage photograph of a man."],
    55: ["A kitchen with a stove, a sink and 3.5 cabinets.", "The kitchen has white cabinets; it's clean.",
         "A small kitchen with a refrigerator.", "Kitchen counters & appliances in a home."],
}
PINNED_PREDS = {11: "A man is riding a bike on the street.", 22: "two dogs are playing with a frisbee",
                33: "A pizza on a white plate!", 44: "An old black and white photo of a man.",
                55: "A kitchen with white cabinets and a sink."}
PINNED = {"Bleu_1": 0.8717948717501643, "Bleu_2": 0.7337993856663286, "Bleu_3": 0.5704955089418227,
          "Bleu_4": 0.4434849262880922, "ROUGE_L": 0.7839278661547407, "CIDEr": 1.8080678497315912}
PINNED_CIDER = {11: 1.403844658151499, 22: 2.113654685754078, 33: 2.3853657650942233, 44: 1.4893289465899149,
                55: 1.6481451930682423}


def test_matches_official_toolkit_numbers():
    metrics, per_image = score_captions(PINNED_REFS, PINNED_PREDS)
    assert list(metrics) == list(PINNED)
    for name, value in PINNED.items():
        assert metrics[name] == pytest.approx(value, abs=1e-12), name
    for image, value in PINNED_CIDER.items():
        assert per_image[image]["CIDEr"] == pytest.approx(value, abs=1e-12)
    assert per_image[44]["ROUGE_L"] == pytest.approx(0.6666666666666666, abs=1e-12)


def trap_files(tmp_path, expected):
    annotations, results = trap_set(expected["seed"], expected["num_images"], expected["id_style"],
                                    expected["universal_reference"])
    refs = load_coco_annotations(write(tmp_path, "captions.json", annotations))
    return refs, load_coco_results(write(tmp_path, "results.json", results), refs)


@pytest.mark.parametrize("expected", OFFICIAL["sets"], ids=lambda e: f"seed{e['seed']}-{e['num_images']}")
def test_equals_official_toolkit_on_trap_sets(tmp_path, expected):
    metrics, per_image = score_captions(*trap_files(tmp_path, expected))
    assert metrics == {name: value for name, value in expected["corpus"].items() if name != "METEOR"}
    if "per_image" in expected:
        assert list(per_image) == expected["image_ids"]
        for name, values in expected["per_image"].items():
            if name != "METEOR":
                assert [scores[name] for scores in per_image.values()] == values, name


def test_meteor_equals_official_toolkit_where_java_runs(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real Java lookup
    if "METEOR" not in cm.available_java_metrics():
        pytest.skip("needs Java and pycocoevalcap's METEOR jar (installed package or $PYCOCOEVALCAP_DIR)")
    expected = OFFICIAL["sets"][0]
    metrics, per_image = score_captions(*trap_files(tmp_path, expected))
    assert metrics["METEOR"] == expected["corpus"]["METEOR"]
    assert [scores["METEOR"] for scores in per_image.values()] == expected["per_image"]["METEOR"]


def test_score_captions_rejects_bad_input():
    with pytest.raises(ValueError, match="without references"):
        score_captions({1: ["a cat"]}, {1: "a cat", 2: "a dog"})
    with pytest.raises(ValueError, match="no predictions"):
        score_captions({1: ["a cat"]}, {})
    with pytest.raises(ValueError, match="non-empty list"):
        score_captions({1: []}, {1: "a cat"})


def write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_loaders_roundtrip_in_image_order(tmp_path):
    ann = write(tmp_path, "captions.json", {
        "images": [{"id": 7}, {"id": 3}, {"id": 9}],
        "annotations": [{"image_id": 3, "id": 1, "caption": "a dog"}, {"image_id": 7, "id": 2, "caption": "a cat"},
                        {"image_id": 3, "id": 3, "caption": "the dog"}]})
    refs = load_coco_annotations(ann)
    assert list(refs.items()) == [(7, ["a cat"]), (3, ["a dog", "the dog"])]
    res = write(tmp_path, "res.json", [{"image_id": 3, "caption": "a dog"}])
    assert load_coco_results(res, refs) == {3: "a dog"}  # image 7 has no result: it is simply not scored


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ({"images": []}, "'annotations' list"),
    ({"annotations": [{"image_id": 1}]}, r"annotations\[0\] has no 'caption'"),
    ({"annotations": [{"caption": "x"}]}, r"annotations\[0\] has no 'image_id'"),
    ({"annotations": [{"image_id": 1, "caption": 5}]}, r"annotations\[0\].caption is not a string"),
])
def test_malformed_annotations(tmp_path, content, message):
    path = write(tmp_path, "bad_captions.json", content)
    with pytest.raises(ValueError, match=message) as err:
        load_coco_annotations(path)
    assert "bad_captions.json" in str(err.value)


@pytest.mark.parametrize("content, message", [
    ({"image_id": 1, "caption": "x"}, "non-empty list"),
    ([], "non-empty list"),
    ([{"image_id": 1}], r"results\[0\] has no 'caption'"),
    ([{"caption": "x"}], r"results\[0\] has no 'image_id'"),
    ([{"image_id": 1, "caption": None}], r"results\[0\].caption is not a string"),
    ([{"image_id": 1, "caption": "x"}, {"image_id": 1, "caption": "y"}], r"results\[1\]: duplicate image_id 1"),
    ([{"image_id": 2, "caption": "x"}], r"image_id not in the annotations .* e.g. \[2\]"),
])
def test_malformed_results(tmp_path, content, message):
    path = write(tmp_path, "bad_results.json", content)
    with pytest.raises(ValueError, match=message) as err:
        load_coco_results(path, {1: ["a cat"]})
    assert "bad_results.json" in str(err.value)


def test_available_java_metrics_without_toolkit(monkeypatch, tmp_path):
    monkeypatch.undo()  # the real function, pointed at an empty toolkit folder
    monkeypatch.setenv("PYCOCOEVALCAP_DIR", str(tmp_path))
    assert cm.available_java_metrics() == []
