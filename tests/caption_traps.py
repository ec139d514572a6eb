"""Seeded COCO caption sets full of the caption toolkit's traps, for checking parity against its recorded numbers.

Captions are built from a few topics (so references and candidates share n-grams) and then bent by what the
PTB tokenizer treats specially: abbreviations and acronyms (also at a caption's end, where the lexer looks into
the next caption), contractions, possessives, every kind of quote, brackets, hyphens and dashes, numbers with
commas, periods and fractions, ellipses, emoticons, URLs, SGML, entities, non-ASCII letters, emoji, odd
whitespace and control characters, letters newer than the lexer's Unicode, e-mail and URL tokens that end
a caption with a Unicode space. Images get 1-7 references, some images share references or candidates
(CIDEr's document frequency), candidates range from empty or punctuation-only to one word to very long, image
ids can be ints, strings or both (7 next to "7"), and the files list images, annotations and results in
different orders. Characters the module docstring lists as a deliberate deviation (\\r, \\x0b, \\x0c, U+2028,
U+2029) are never generated.
"""
from __future__ import annotations

import random

TOPICS = [
    ["a man riding a bike down the street", "a man rides his bicycle on a city street",
     "a cyclist wearing a helmet rides down the road", "man on a bike in traffic near a bus",
     "a person riding a bicycle past parked cars", "a man is riding a bike on the street"],
    ["two dogs playing with a frisbee in the park", "a pair of dogs chase a frisbee on the grass",
     "two dogs are playing in a park", "dogs playing with a red toy", "a brown dog and a white dog run"],
    ["a pizza with cheese and pepperoni on a plate", "a pepperoni pizza is not cut yet",
     "close up of a large pizza with olives", "a pizza on a white plate", "a 12 inch pizza sitting on the table"],
    ["a kitchen with a stove a sink and cabinets", "the kitchen has white cabinets and it is clean",
     "a small kitchen with a refrigerator", "kitchen counters and appliances in a home"],
    ["a train traveling down the tracks near a station", "a red and white train on the tracks",
     "a passenger train pulling into a station", "an old steam train on a bridge"],
    ["a cat sleeping on a laptop keyboard", "a black cat lying on a computer", "a cat on top of a laptop",
     "the cat is sitting on the desk next to a laptop"],
    ["people walking on the beach at sunset", "a group of people standing on the sand near the ocean",
     "a surfer carrying a board on the beach", "the beach is crowded with people and umbrellas"],
    ["a plate of food with broccoli and rice", "a bowl of soup next to a sandwich",
     "a table full of food and drinks", "a plate with meat and vegetables on it"],
    ["a baseball player swinging a bat at a ball", "a batter waiting for the pitch",
     "a man playing tennis on a court", "a soccer player kicking the ball on a field"],
    ["a black and white photo of an old man in a suit", "a vintage photograph of a man wearing a hat",
     "an old man standing near a car", "a black and white picture of a street"],
]

# Fragments the tokenizer splits, joins, rewrites or drops; inserted between words.
FRAGMENTS = [
    "in the U.S.", "at 5 p.m.", "at 10 a.m.", "Mr. Smith", "Mrs. Jones", "Dr. Who", "St. Louis", "Mt. Fuji",
    "Calif.", "Jan. 5", "Inc.", "Corp.", "etc.", "vs.", "a.k.a.", "Ph.D.", "No. 5", "fig. 3", "U.K.", "U.S.A.",
    "i.e.", "e.g.", "Jr.", "U.S.-U.K.", "non-U.S.", "A.", "Ave.", "Sept.", "Gen. Lee",
    "isn't", "can't", "won't", "don't", "DON'T", "ain't", "I'm", "we're", "they've", "she'd", "you'll",
    "cannot", "CANNOT", "gonna", "gotta", "wanna", "lemme", "'twas", "'tis", "y'all", "rock'n'roll",
    "o'clock", "c'mon", "'em", "'90s", "'cause", "ol'", "isn\u2019t", "it\u2019s", "don`t",
    "dog's", "dogs'", "James's", "the kids'", "O'Neil", "d'Artagnan", "l'hotel",
    "\"quoted\"", "\"", "'single'", "\u201ccurly\u201d", "\u2018curly\u2019", "\u00abguillemets\u00bb",
    "\u201elow\u201c", "``latex''", "\u2039a\u203a", "''", "``", "\u201c", "\u201d", "'", "`",
    "(near a bus)", "( x )", "[sic]", "{braces}", "(", ")", "[", "]", "{", "}", "-LRB-", "-rrb-",
    "black-and-white", "e-mail", "x-ray", "t-shirt", "re-enter", "--", "---", "-", " - ", "\u2013", "\u2014",
    "\u2015", "pro-choice", "anti-war", "well_known", "a\u2010b", "U.S.-based",
    "1,000", "3.5", "1/2", "1 1/2", "3/4", "\u00bd", "\u00bc", "\u2153", "10,000.50", "-5", "+3", "0.25",
    "12/25/2019", "2010-2012", "555-1234", "(555) 123-4567", "5x7", "x^2", "1st", "2nd", "3:30",
    "\u00b9", "\u00b2", "H\u2082O", "50%", "$5", "US$5", "\u20ac10", "\u00a33", "\u00a2", "\u00a5100", "#1",
    "...", "\u2026", ". . .", "....", "......", "!!", "?!", "!?", "?", "!", ";", ":", ",", ".",
    ":)", ":-)", ";-)", ":(", ":D", ":P", "<3", "=)", "^_^", "-_-", "(-:", ":]", "xD", ";)", ":o)",
    "www.example.com", "http://x.org/a?b=1", "https://coco.org", "foo@bar.com", "@user", "#tag", "#1tag",
    "<b>bold</b>", "<br/>", "<p>", "&amp;", "&quot;", "&lt;", "&gt;", "&nbsp;", "&#39;", "&mdash;", "AT&T",
    "AT&amp;T", "S&P-500", "C++", "c#", "F#", "R&B", "a+b", "Q&A", "and/or", "w/", "\\", "/", "|", "~",
    "*", "**", "***", "=", "==", "_", "__", "@", "+", "&", "^", "<", ">", "<<", ">>",
    "\u00b0", "\u00a9", "\u00ae", "\u2122", "\u00d7", "\u00f7", "\u00a7", "\u00b6", "\u2022", "\u00b7",
    "caf\u00e9", "na\u00efve", "fa\u00e7ade", "r\u00e9sum\u00e9", "Stra\u00dfe", "Zo\u00eb", "\u00c9cole",
    "\u0395\u03bb\u03bb\u03ac\u03b4\u03b1", "\u041c\u043e\u0441\u043a\u0432\u0430", "\u65e5\u672c",
    "\u6771\u4eac\u30bf\u30ef\u30fc", "\u0627\u0644\u0642\u0627\u0647\u0631\u0629", "\u05e9\u05dc\u05d5\u05dd",
    "\u0939\u093f\u0928\u094d\u0926\u0940", "cafe\u0301", "\U0001f600", "\U0001f436\U0001f431", "\u2764\ufe0f",
    "\U0001d400bc", "\u00a1hola!", "\u00bfqu\u00e9?", "\u3002", "\u3001", "\uff01", "\u00ad",
    "co\u00adop", "\u200b", "\ufeff", "\u200e", "\x7f", "\x00", "\x1c", "\x1f", "\x85", "\u1680", "\u202f",
    "\u3000", "\u2009", "\u00a0", "\t", "  ", "\n", "file.jpg", "setup.py", "C.D.s", "Cap'n", "nor'easter",
    # letters and digits newer than the lexer's Unicode 6.2 (deleted there) next to ones it knows (kept)
    "\u037fes", "\ua7aa\ua7ab", "\uab70\uab71", "\u1c90\u1c91", "\u0de7\u0de8", "5\ua9f1", "\u1885x",
    "\u08a0\u08a1", "\u0e86\u0e81", "\u9fcc\u9fcd", "\u0528\u0529", "\u13f5\u13a0",
]

# Caption ends whose last token keeps a trailing Unicode space the toolkit's rstrip() then removes.
TAILS = ["foo@bar.com\u3000", "www.example.com\u202f", "http://x.org/a\u2009", "a@b.org\x1f", "x.com\u1680",
         "mail@host.net\u2000"]

# Whole captions that tokenize to little or nothing, or to one odd token.
SPECIALS = [
    "", " ", "  \t ", ".", "...", "\u2026", "!!!", "?", "--", "-", "''", "\"\"", "( )", ":)", ";-)", "-_-",
    "\u00ad", "\u200b", "&amp;", "&quot;", "<br>", "\U0001f600", "\U0001f600\U0001f600", "a", "A.", "U.S.",
    "Mr.", "p.m.", "dog", "Dog.", "DOG!", "dog dog dog dog dog dog", "the the the", "1/2", "\u00bd", "1,000",
    "3.14", "$", "%", "\u00e9", "\u65e5\u672c", "\"a\"", "(a)", "\n", "a\nb", "\x7f", "'",
]

SENTENCE_STARTS = ["The", "A", "He", "She", "This", "There", "It", "In", "Mr.", "An", "These", "When", "But"]
ABBREV_ENDS = ["in the U.S.", "at 5 p.m.", "near Mr.", "from Calif.", "the letter A.", "and so on etc.",
               "of Acme Inc.", "in Jan.", "U.S.", "vs.", "at No.", "a.k.a.", "on St."]


def _mutate(rng: random.Random, caption: str) -> str:
    """`caption` with zero to three of the tokenizer's traps applied."""
    words = caption.split(" ")
    for _ in range(rng.choice([0, 1, 1, 2, 2, 3])):
        kind = rng.randrange(12)
        if kind <= 3:
            words.insert(rng.randint(0, len(words)), rng.choice(FRAGMENTS))
        elif kind == 4 and words:
            i = rng.randrange(len(words))
            words[i] = rng.choice([words[i].upper(), words[i].capitalize(), words[i] + words[i][-1:] * 2,
                                   words[i] + " " + words[i], words[i] + "\u00ad" + words[i],
                                   "(" + words[i] + ")", words[i] + ",", words[i] + "'s", words[i] + "s'"])
        elif kind == 5:
            words = [" ".join(words).replace(" and ", rng.choice(["-and-", " & ", " \u2013and\u2013 ", " + "]))]
        elif kind == 6:
            words = [" ".join(words).replace(" is not", rng.choice([" isn't", " is n't", " ISN'T", " isn\u2019t",
                                                                   " is not", " aint"]))]
        elif kind == 7:
            left, right = rng.choice([('"', '"'), ("\u201c", "\u201d"), ("'", "'"), ("\u2018", "\u2019"),
                                      ("``", "''"), ("\u00ab", "\u00bb"), ("(", ")"), ("[", "]"), ("<", ">")])
            words = [left + " ".join(words) + right]
        elif kind == 8:
            sep = rng.choice(["  ", "\t", "\u00a0", "\n", " \u200b ", "\u3000", "\u2009"])
            words = [sep.join(words)]
        elif kind == 9:
            words = [rng.choice(["", " ", "\t", "\n"]) + " ".join(words) + rng.choice(["", " ", "  ", "\n"])]
        elif kind == 10:
            words = [" ".join(words).replace("e", rng.choice(["\u00e9", "e", "\u00e8"]), 1)]
        else:
            words.append(rng.choice(ABBREV_ENDS))
    text = " ".join(words)
    if rng.random() < 0.5:
        text = text[:1].upper() + text[1:]
    if rng.random() < 0.15:
        text = rng.choice(SENTENCE_STARTS) + " " + text
    if rng.random() < 0.04:
        return text + " " + rng.choice(TAILS)
    return text + rng.choice(["", "", ".", ".", " .", "!", "?", "...", "\u2026", "!!", "?!", ". ", ";", ":)",
                              " :)", ",", "-", " --", "'", '"', "\u201d", ")"])


VOCABULARY = sorted({w for topic in TOPICS for caption in topic for w in caption.split()})


def _random_words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(count))


def _reference(rng: random.Random, topic: list[str]) -> str:
    roll = rng.random()
    if roll < 0.03:
        return rng.choice(SPECIALS)
    if roll < 0.08:
        return _mutate(rng, rng.choice(topic)) + " " + rng.choice(ABBREV_ENDS)
    return _mutate(rng, rng.choice(topic))


def _candidate(rng: random.Random, refs: list[str], topic: list[str], earlier: list[str]) -> str:
    """A candidate sharing many, some or no n-grams with `refs`, or a duplicate of an earlier one."""
    roll = rng.random()
    if roll < 0.25:
        return _mutate(rng, rng.choice(refs))
    if roll < 0.35:
        return rng.choice(refs)  # verbatim: the references' own tokenization, matching in full
    if roll < 0.47:
        a, b = rng.choice(topic).split(), rng.choice(topic).split()
        return _mutate(rng, " ".join(a[:len(a) // 2] + b[len(b) // 2:]))
    if roll < 0.55:
        return _mutate(rng, rng.choice(rng.choice(TOPICS)))  # probably another topic: few shared n-grams
    if roll < 0.62:
        return _mutate(rng, _random_words(rng, rng.randint(2, 12)))
    if roll < 0.69:
        return rng.choice([rng.choice(rng.choice(TOPICS)).split()[-1], rng.choice(FRAGMENTS),
                           rng.choice(topic).split()[1].capitalize() + rng.choice(["", ".", "!"])])
    if roll < 0.75:
        parts = [_mutate(rng, rng.choice(topic)) for _ in range(rng.randint(3, 9))]
        return rng.choice([" and ", ", ", " ", "; ", " -- "]).join(parts)
    if roll < 0.81:
        return rng.choice(SPECIALS)
    if roll < 0.85:
        word = rng.choice(rng.choice(topic).split())
        return " ".join([word] * rng.randint(2, 12))
    if earlier:
        return rng.choice(earlier)
    return rng.choice(topic)


def _image_ids(rng: random.Random, num_images: int, id_style: str) -> list:
    if id_style == "int":
        return rng.sample(range(1, 600000), num_images)
    if id_style == "str":
        return [f"COCO_val2014_{n:012d}" for n in rng.sample(range(1, 600000), num_images)]
    ids: list = []
    for n in rng.sample(range(5 * num_images), num_images):
        roll = rng.random()
        ids.append(n if roll < 0.45 else str(n) if roll < 0.7 else f"img-{n}" if roll < 0.9 else f"{n:06d}")
    # numeric strings equal to an int id as text: 7 and "7" are two images
    for k, n in enumerate(rng.sample([n for n in ids if isinstance(n, int)], num_images // 20)):
        ids[-1 - k] = str(n)
    return ids


def trap_set(seed: int, num_images: int, id_style: str = "int", universal_reference: bool = False
             ) -> tuple[dict, list[dict]]:
    """(captions annotation file, results file) in COCO's layouts, all derived from the arguments.

    `universal_reference` gives every image one reference caption in common, so some n-grams occur in every
    image (document frequency equal to the number of images: a CIDEr weight of exactly zero).
    """
    rng = random.Random(seed)
    image_ids = _image_ids(rng, num_images, id_style)
    references: dict = {}
    candidates: dict = {}
    earlier: list[str] = []
    for image_id in image_ids:
        topic = rng.choice(TOPICS)
        if references and rng.random() < 0.05:
            references[image_id] = list(rng.choice(list(references.values())))  # a twin image
        else:
            count = rng.choice([1, 2, 3, 4, 5, 5, 5, 5, 6, 7])
            references[image_id] = [_reference(rng, topic) for _ in range(count)]
        if universal_reference:
            references[image_id].insert(rng.randint(0, len(references[image_id])), "A photo of something.")
        if rng.random() < 0.05:
            continue  # an image without a result: not scored
        candidates[image_id] = _candidate(rng, references[image_id], topic, earlier)
        earlier.append(candidates[image_id])
    images = [{"id": i, "file_name": f"{i}.jpg"} for i in image_ids]
    rng.shuffle(images)  # the toolkit scores in the images list's order, not the annotations'
    annotations = [{"image_id": i, "caption": c} for i in image_ids for c in references[i]]
    rng.shuffle(annotations)  # an image's captions reach the tokenizer in file order, interleaved with others
    for n, ann in enumerate(annotations, 1):
        ann["id"] = n
    results = [{"image_id": i, "caption": c} for i, c in candidates.items()]
    rng.shuffle(results)
    return ({"info": {"description": f"caption traps seed {seed}"}, "images": images,
             "annotations": annotations}, results)
