"""Caption facts: whether what a caption says about a shapes scene is true, fact by fact.

BLEU, ROUGE and CIDEr reward a caption for sharing n-grams with the references, so "a small red star in the
top left corner" scores well on a scene whose star is blue and in the top right. Here each caption is parsed
into the facts it states (an object's colour, shape, size and position, the number of shapes, a spatial
relation between two objects) and each fact is checked against the scene record the renderer wrote
(mmgpt.data.shapes). A fact a caption does not state is neither right nor wrong; how often it is stated is
reported beside its accuracy, so a model cannot look accurate by saying less.

The parser knows the renderer's own vocabulary (colour, shape, size and location names, the number words) and
the ways its captions phrase them: "medium-sized" is medium, "a single" claims one shape, "an image with one
circle, which is red" gives the circle its colour, "one small red shape: a circle" is one object, "to the left
of" is a relation and not the position "on the left". Words are matched whole, so "red" inside "covered" or
"reddish" is no colour.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmgpt.data.shapes import COLORS, NUMBERS, SHAPES, SIZES
from mmgpt.jsonfile import read_json_file

FACTS = ("position", "colour", "shape", "size", "count", "relation")
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*|[,:;.]")
_NUMBER_WORDS = {word: n for n, word in NUMBERS.items()}
_SIZE_WORDS = {**{s: s for s in SIZES}, "medium-sized": "medium"}
_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{s + "s": s for s in SHAPES}}
_GENERIC_NOUNS = ("shape", "shapes", "object", "objects")
_RELATIONS = {("to", "the", "left", "of"): "left of", ("to", "the", "right", "of"): "right of",
              ("left", "of"): "left of", ("right", "of"): "right of", ("above",): "above", ("below",): "below"}
# words that keep the object just named open for its colour or size: "one circle, which is red"
_REOPEN = ("which", "that", "is", "are")


@dataclass
class Mention:
    """One object a caption names, with what it says about it; position is a (row, col) cell of the 3x3 grid."""

    size: str | None = None
    color: str | None = None
    shape: str | None = None
    positions: list[tuple[int, int]] = field(default_factory=list)
    number: int | None = None  # the number word in front of it: "two circles", "one small red shape"
    plural: bool = False
    generic: bool = False  # its noun was "shape": "one small red shape: a circle" names the shape after

    def has_head(self) -> bool:
        return self.shape is not None or self.generic

    def multiplicity(self) -> int:
        """How many shapes it stands for: its number word, else two for a plural ("circles"), else one."""
        return self.number or (2 if self.plural else 1)


@dataclass
class ParsedCaption:
    """What a caption states: its objects, its claimed number of shapes and its relations between objects."""

    mentions: list[Mention]
    count: int | None
    relations: list[tuple[int, str, int]]  # (mention index, "left of" | "right of" | "above" | "below", index)
    loose_positions: list[tuple[int, int]]  # positions before any object is named: true where some object is


def _location(words: list[str], i: int) -> tuple[tuple[int, int], int] | None:
    """A location phrase at words[i] ("in the top left corner", "at the bottom", "in the center of the image")."""
    if words[i] not in ("in", "at", "on") or i + 1 >= len(words) or words[i + 1] != "the":
        return None
    j, row, col = i + 2, 1, 1
    if j < len(words) and words[j] in ("center", "centre", "middle"):
        row, col, j = 1, 1, j + 1
    else:
        if j < len(words) and words[j] in ("top", "bottom"):
            row, j = (0 if words[j] == "top" else 2), j + 1
        if j < len(words) and words[j] in ("left", "right"):
            col, j = (0 if words[j] == "left" else 2), j + 1
        if j == i + 2:
            return None
        if j < len(words) and words[j] == "corner":
            j += 1
    if words[j:j + 3] == ["of", "the", "image"]:
        j += 3
    return (row, col), j


def _relation(words: list[str], i: int) -> tuple[str, int] | None:
    for phrase, name in _RELATIONS.items():
        if tuple(words[i:i + len(phrase)]) == phrase:
            return name, i + len(phrase)
    return None


def parse_caption(caption: str) -> ParsedCaption:
    """The facts a caption states (see the module docstring for the phrasings it reads)."""
    words = _WORD.findall(caption.lower())
    mentions: list[Mention] = []
    relations: list[tuple[int, str, int]] = []
    loose_positions: list[tuple[int, int]] = []
    explicit_count: int | None = None
    number: int | None = None  # a number word waiting for its noun
    open_ = False  # the last mention still takes attributes
    reopened = False  # after "which is": it takes a colour or size, not a new noun
    pending_relation: tuple[int, str] | None = None
    since_generic: list[str] | None = None  # words after a generic noun, to join "shape: a circle"
    enumeration = True  # the objects are listed, so their number is the number of shapes claimed
    i = 0

    def start() -> Mention:
        nonlocal open_, pending_relation, number
        mention = Mention(number=number)
        mentions.append(mention)
        if pending_relation is not None:
            relations.append((pending_relation[0], pending_relation[1], len(mentions) - 1))
            pending_relation = None
        number, open_ = None, True
        return mention

    while i < len(words):
        word = words[i]
        if (location := _location(words, i)) is not None:
            (mentions[-1].positions if mentions else loose_positions).append(location[0])
            open_, reopened, i = False, False, location[1]
            continue
        if (relation := _relation(words, i)) is not None:
            if mentions:
                pending_relation = (len(mentions) - 1, relation[0])
            enumeration, open_, reopened, i = False, False, False, relation[1]
            continue
        if word in COLORS and i + 1 < len(words) and words[i + 1] == "background":
            i += 2  # the background's colour, not an object's
            continue
        if word in _NUMBER_WORDS or word == "single":
            number = 1 if word == "single" else _NUMBER_WORDS[word]
            if word == "single":
                explicit_count = 1
        elif word in COLORS or word in _SIZE_WORDS:
            slot, value = ("color", word) if word in COLORS else ("size", _SIZE_WORDS[word])
            current = mentions[-1] if mentions and (open_ or reopened) else None
            if current is None or getattr(current, slot) is not None or (current.has_head() and not reopened):
                current = start()
            setattr(current, slot, value)
        elif word in _SHAPE_WORDS:
            current = mentions[-1] if mentions else None
            joins_generic = (current is not None and current.generic and current.shape is None
                             and since_generic is not None and set(since_generic) <= {":", "a", "an"})
            if joins_generic:
                current.shape = _SHAPE_WORDS[word]
            else:
                if current is None or not open_ or current.has_head():
                    current = start()
                current.shape = _SHAPE_WORDS[word]
                current.plural = word.endswith("s")
            open_, reopened, since_generic = False, False, None
            i += 1
            continue
        elif word in _GENERIC_NOUNS:
            current = mentions[-1] if mentions and open_ and not mentions[-1].has_head() else None
            if number is not None or (current is not None and current.number is not None):
                explicit_count = number if number is not None else current.number
            if current is not None:
                current.generic, since_generic = True, []
            number, open_, reopened = None, False, False
            i += 1
            continue
        elif word in _REOPEN and mentions:
            reopened = reopened or mentions[-1].has_head()
        elif word in ("and", ",", ";", "."):
            open_, reopened = False, False
        elif word == "including":
            enumeration = False
        if since_generic is not None:
            since_generic.append(word)
        i += 1
    count = explicit_count
    if count is None and enumeration and mentions:
        count = sum(m.multiplicity() for m in mentions)
    return ParsedCaption(mentions, count, relations, loose_positions)


def _agreement(mention: Mention, obj: Mapping[str, Any]) -> int:
    return ((mention.color == obj["color"]) + (mention.shape == obj["shape"]) + (mention.size == obj["size"])
            + sum(p == (obj["row"], obj["col"]) for p in mention.positions))


def _match(mentions: Sequence[Mention], objects: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any] | None]:
    """Each mention's scene object, one object per mention, agreeing with the most of what is said.

    A caption's mentions name different objects, so two mentions of "a green triangle" in a scene with one
    cannot both be right; a mention left without an object (more mentions than objects) is an object that
    is not there. Ties go to the earlier object and to giving more mentions an object.
    """
    best: tuple[int, int] = (-1, -1)
    best_match: list[Mapping[str, Any] | None] = [None] * len(mentions)

    def search(i: int, used: frozenset[int], chosen: list[int | None], score: int, assigned: int) -> None:
        nonlocal best, best_match
        if i == len(mentions):
            if (score, assigned) > best:
                best, best_match = (score, assigned), [None if k is None else objects[k] for k in chosen]
            return
        for k in range(len(objects)):
            if k not in used:
                search(i + 1, used | {k}, chosen + [k], score + _agreement(mentions[i], objects[k]), assigned + 1)
        search(i + 1, used, chosen + [None], score, assigned)

    search(0, frozenset(), [], 0, 0)
    return best_match


def _relation_holds(a: Mapping[str, Any] | None, relation: str, b: Mapping[str, Any] | None) -> bool:
    if a is None or b is None or a is b:
        return False
    return {"left of": a["col"] < b["col"], "right of": a["col"] > b["col"],
            "above": a["row"] < b["row"], "below": a["row"] > b["row"]}[relation]


def check_caption(caption: str, scene: Mapping[str, Any]) -> dict[str, list[bool]]:
    """Each fact the caption states about the scene, right (True) or wrong (False), by fact name."""
    parsed, objects = parse_caption(caption), scene["shapes"]
    checks: dict[str, list[bool]] = {name: [] for name in FACTS}
    matched = _match(parsed.mentions, objects)
    for mention, obj in zip(parsed.mentions, matched):
        for name, value, key in (("colour", mention.color, "color"), ("shape", mention.shape, "shape"),
                                 ("size", mention.size, "size")):
            if value is not None:
                checks[name].append(obj is not None and value == obj[key])
        checks["position"] += [obj is not None and p == (obj["row"], obj["col"]) for p in mention.positions]
    checks["position"] += [any(p == (o["row"], o["col"]) for o in objects) for p in parsed.loose_positions]
    if parsed.count is not None:
        checks["count"].append(parsed.count == len(objects))
    checks["relation"] += [_relation_holds(matched[a], rel, matched[b]) for a, rel, b in parsed.relations]
    return checks


def score_caption_facts(scenes: Mapping[Any, Mapping[str, Any]], predictions: Mapping[Any, str]) -> dict[str, Any]:
    """Per fact, overall and by the scene's number of shapes: facts checked, right, accuracy, captions stating it.

    Only images with both a scene and a caption are scored. `accuracy` is right / checked (None when no caption
    states the fact); `stated_in` is the share of captions that state it at least once.
    """
    tallies: dict[str, dict[str, list[int]]] = {name: {} for name in FACTS}
    images: dict[str, int] = {}
    for image_id, caption in predictions.items():
        if image_id not in scenes:
            continue
        group = str(len(scenes[image_id]["shapes"]))
        checks = check_caption(caption, scenes[image_id])
        for key in (group, "all"):
            images[key] = images.get(key, 0) + 1
            for name, results in checks.items():
                tally = tallies[name].setdefault(key, [0, 0, 0])
                tally[0] += len(results)
                tally[1] += sum(results)
                tally[2] += bool(results)
    out: dict[str, Any] = {}
    for name in FACTS:
        out[name] = {}
        for key in sorted(images, key=lambda k: (k == "all", k)):
            checked, right, stating = tallies[name].get(key, [0, 0, 0])
            out[name][key] = {"checked": checked, "right": right,
                              "accuracy": right / checked if checked else None,
                              "stated_in": stating / images[key], "captions": images[key]}
    return out


def facts_text(facts: Mapping[str, Any]) -> str:
    """A fixed-width table: per fact and scene size, % right of the facts stated (and % of captions stating it)."""
    groups = list(next(iter(facts.values())))
    names = ["all scenes" if g == "all" else f"{g} shape{'s' * (g != '1')}" for g in groups]
    lines = ["caption facts: % right of those stated (% of captions stating it)",
             f"  {'':<9}" + "".join(f"{n:>16}" for n in names)]
    for fact, by_group in facts.items():
        cells = []
        for g in groups:
            acc, stated = by_group[g]["accuracy"], 100 * by_group[g]["stated_in"]
            cells.append(f"{'-' if acc is None else f'{100 * acc:.1f}'} ({stated:.0f})")
        lines.append(f"  {fact:<9}" + "".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)


def load_scenes(annotations: str) -> dict[Any, Any]:
    """{image_id: scene} from a COCO captions file whose images carry the renderer's scene records ({} if none)."""
    data = read_json_file(annotations)
    images = data.get("images", []) if isinstance(data, dict) else []
    return {img["id"]: img["scene"] for img in images
            if isinstance(img, dict) and "id" in img and isinstance(img.get("scene"), dict)}
