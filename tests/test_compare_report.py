"""The compare-fusions report as people read it: the HTML page in a real headless chromium at 1280 px."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
from chromium import start_chromium

from mmgpt.compare_report import write_report
from mmgpt.fusion import FUSIONS

TYPES = ("what color is the", "what shape is", "is there a", "is there not a", "does the image contain a",
         "does the image not contain a")


def records(seeds: list[int]) -> list[dict]:
    """Records of every fusion, the blind and the prior control, as compare-fusions writes them."""
    rng = np.random.default_rng(0)
    out = []
    for i, fusion in enumerate([*sorted(FUSIONS), "blind"]):
        for seed in seeds:
            hits = [int(rng.random() < 0.4 + 0.05 * i) for _ in range(200)]
            out.append({
                "fusion": fusion, "seed": seed, "architecture": "cross_attention" if fusion == "blind" else fusion,
                "width": 96 + 8 * i, "steps": 300, "parameters": 700_000 + 1000 * i, "fusion_parameters": 150_000,
                "seconds_per_step": 0.2 + 0.01 * i, "wall_seconds": {"setup": 3.0, "training": 60.0, "evaluation": 8.0},
                "metrics": {"easy_vqa_test/vqa_exact_match": 100.0 * np.mean(hits), "easy_vqa_test/loss": 0.5,
                            "shapes_captions_val/caption_Bleu_4": 0.3 + 0.01 * seed,
                            "shapes_captions_val/caption_CIDEr": 1.2, "shapes_captions_val/loss": 0.6},
                "per_question_type": {"easy_vqa_test": {t: float(rng.integers(30, 100)) for t in TYPES}},
                "per_question": {"easy_vqa_test": hits},
                # three decades of loss: the log axis's labels must stay apart and plain
                "eval_curve": [[75, 12.0 - 0.1 * i], [150, 1.5], [225, 0.02 + 0.01 * i]]})
    hits = [int(rng.random() < 0.55) for _ in range(200)]
    out.append({"fusion": "prior", "seed": None, "steps": 0, "parameters": None, "fusion_parameters": None,
                "seconds_per_step": None, "metrics": {"easy_vqa_test/vqa_exact_match": 100.0 * np.mean(hits)},
                "per_question_type": {"easy_vqa_test": dict.fromkeys(TYPES, 50.0)},
                "per_question": {"easy_vqa_test": hits}, "eval_curve": []})
    return out


# the bounding boxes of the visible texts under a CSS selector
BOXES = """return Array.from(document.querySelectorAll(arguments[0])).filter(e => e.textContent.trim())
    .map(e => { const r = e.getBoundingClientRect();
                return {text: e.textContent.trim(), left: r.left, right: r.right, top: r.top, bottom: r.bottom}; });"""
# table cells whose text runs past their border
SPILLING = """return Array.from(document.querySelectorAll('td, th')).filter(c => c.scrollWidth > c.clientWidth)
    .map(c => c.textContent);"""


def overlapping(boxes: list[dict]) -> list[tuple[str, str]]:
    """The pairs of boxes that share more than a pixel each way."""
    return [(a["text"], b["text"]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
            if min(a["right"], b["right"]) - max(a["left"], b["left"]) > 1
            and min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > 1]


@pytest.mark.parametrize("seeds", [[0], [0, 1, 2]])
def test_report_fits_a_1280_px_window_and_no_labels_overlap(seeds: list[int], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    args = argparse.Namespace(config="default", steps=300, seeds=seeds, fusions=sorted(FUSIONS), overrides=[],
                              match_params=150_000, widths={}, out=str(tmp_path))
    write_report(args, records(seeds), [])
    browser = start_chromium(tmp_path / "profile", width=1280, height=900)
    try:
        browser.get((tmp_path / "report.html").as_uri())
        assert browser.execute_script("return window.innerWidth") == 1280
        # no horizontal scrolling: not the page, not a table's own box, no cell's text past its border
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 1280
        assert browser.execute_script(
            "return Array.from(document.querySelectorAll('.scroll')).map(e => e.scrollWidth - e.clientWidth)") == [0, 0]
        assert browser.execute_script(SPILLING) == []
        text = browser.find_element("id", "main").text + browser.find_element("id", "types").text
        if len(seeds) == 1:  # one seed: no spread and no interval, said once per row
            assert "±" not in text and text.count("n=1, no interval") == len(FUSIONS) + 1
        else:
            assert re.search(r"\d+\.\d ± \d+\.\d", text) and " to " in text
        bars = browser.execute_script(BOXES, "#vqa g[id^=ytick] text")
        assert [b["text"] for b in bars][:1] and {b["text"] for b in bars} == {*FUSIONS, "blind", "prior"}
        assert overlapping(bars) == []
        loss_axis = browser.execute_script(BOXES, "#eval_curves g[id^=ytick] text")
        assert len(loss_axis) >= 3 and overlapping(loss_axis) == []
        # plain numbers on the log axis, not 10^x or 4.4 x 10^0
        assert all(re.fullmatch(r"\d+(\.\d+)?", b["text"]) for b in loss_axis), [b["text"] for b in loss_axis]
        for selector in ("#eval_curves g[id^=xtick] text", "#vqa g[id^=xtick] text", "#main th", "#types th"):
            assert overlapping(browser.execute_script(BOXES, selector)) == [], selector
        browser.set_window_size(1280, browser.execute_script("return document.documentElement.scrollHeight") + 150)
        browser.save_screenshot(str(tmp_path / "report.png"))
    finally:
        browser.quit()
