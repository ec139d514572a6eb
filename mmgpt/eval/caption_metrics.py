"""COCO caption metrics (pycocoevalcap 1.2) in pure Python: PTB tokenization, BLEU-1..4, ROUGE-L, CIDEr-D.

The numbers equal `COCOEvalCap.evaluate()` (which tokenizes with Stanford CoreNLP 3.4.1 run through Java).
The tokenizer is a rule-for-rule port of that release's PTBLexer (JFlex: longest match, trailing context
counted in the match length, earlier rule wins ties, literals caseless, character classes case-sensitive),
fed the same newline-joined stream, so even its cross-caption look-ahead ("U.S." before "The") carries over.
Its letter and digit classes are the Unicode 6.2 ones JFlex compiled in, whatever Python's Unicode is, and each
line is split after the toolkit's own rstrip().
Deliberate deviations: a caption holding \\r, \\x0b, \\x0c, U+2028 or U+2029 makes the Java tool emit extra
lines and misalign every later caption; here those characters only separate tokens. Tokens are lowercased by
Python's str.lower(), which differs from the JVM's String.toLowerCase() in two corners that depend on the JVM,
not on the toolkit: a capital sigma (U+03A3), whose final form the JDK decides by its own word boundaries (in
"SIGMA-SIGMA" it makes the second one final, Python neither), and, inside URL, e-mail or SGML tokens, letters
whose case mapping is newer than the JVM's Unicode (Java 17 keeps U+2C2F; Python 3.11 lowercases it).
METEOR and SPICE need Java and the toolkit's jars; they are added when `available_java_metrics()` finds them.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmgpt.jsonfile import read_json_file
from mmgpt.saving import write_json

logger = logging.getLogger(__name__)

# Tokens pycocoevalcap drops after tokenizing; the bracket names never match since they come out lowercased.
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                          ".", "?", "!", ",", ":", "-", "--", "...", ";"])


# JFlex froze [:letter:] and [:digit:] into the 3.4.1 lexer with the Unicode of its Java (6.2), so what Unicode
# added later (Greek yot, Latin Extended-D/E additions, Georgian Mtavruli, Cherokee small letters, new Lao, Tai
# Laing digits, ...) is untokenizable there and deleted, while U+1885-1886, letters in 6.2 and marks since, are
# word characters. Fixed BMP tables, not the running Python's unicodedata, whose version moves with Python.
_LETTER_RANGES = (
    "0041-005A 0061-007A 00AA 00B5 00BA 00C0-00D6 00D8-00F6 00F8-02C1 02C6-02D1 02E0-02E4 02EC 02EE 0370-0374 "
    "0376-0377 037A-037D 0386 0388-038A 038C 038E-03A1 03A3-03F5 03F7-0481 048A-0527 0531-0556 0559 0561-0587 "
    "05D0-05EA 05F0-05F2 0620-064A 066E-066F 0671-06D3 06D5 06E5-06E6 06EE-06EF 06FA-06FC 06FF 0710 0712-072F "
    "074D-07A5 07B1 07CA-07EA 07F4-07F5 07FA 0800-0815 081A 0824 0828 0840-0858 08A0 08A2-08AC 0904-0939 093D "
    "0950 0958-0961 0971-0977 0979-097F 0985-098C 098F-0990 0993-09A8 09AA-09B0 09B2 09B6-09B9 09BD 09CE "
    "09DC-09DD 09DF-09E1 09F0-09F1 0A05-0A0A 0A0F-0A10 0A13-0A28 0A2A-0A30 0A32-0A33 0A35-0A36 0A38-0A39 "
    "0A59-0A5C 0A5E 0A72-0A74 0A85-0A8D 0A8F-0A91 0A93-0AA8 0AAA-0AB0 0AB2-0AB3 0AB5-0AB9 0ABD 0AD0 0AE0-0AE1 "
    "0B05-0B0C 0B0F-0B10 0B13-0B28 0B2A-0B30 0B32-0B33 0B35-0B39 0B3D 0B5C-0B5D 0B5F-0B61 0B71 0B83 0B85-0B8A "
    "0B8E-0B90 0B92-0B95 0B99-0B9A 0B9C 0B9E-0B9F 0BA3-0BA4 0BA8-0BAA 0BAE-0BB9 0BD0 0C05-0C0C 0C0E-0C10 "
    "0C12-0C28 0C2A-0C33 0C35-0C39 0C3D 0C58-0C59 0C60-0C61 0C85-0C8C 0C8E-0C90 0C92-0CA8 0CAA-0CB3 0CB5-0CB9 "
    "0CBD 0CDE 0CE0-0CE1 0CF1-0CF2 0D05-0D0C 0D0E-0D10 0D12-0D3A 0D3D 0D4E 0D60-0D61 0D7A-0D7F 0D85-0D96 "
    "0D9A-0DB1 0DB3-0DBB 0DBD 0DC0-0DC6 0E01-0E30 0E32-0E33 0E40-0E46 0E81-0E82 0E84 0E87-0E88 0E8A 0E8D "
    "0E94-0E97 0E99-0E9F 0EA1-0EA3 0EA5 0EA7 0EAA-0EAB 0EAD-0EB0 0EB2-0EB3 0EBD 0EC0-0EC4 0EC6 0EDC-0EDF 0F00 "
    "0F40-0F47 0F49-0F6C 0F88-0F8C 1000-102A 103F 1050-1055 105A-105D 1061 1065-1066 106E-1070 1075-1081 108E "
    "10A0-10C5 10C7 10CD 10D0-10FA 10FC-1248 124A-124D 1250-1256 1258 125A-125D 1260-1288 128A-128D 1290-12B0 "
    "12B2-12B5 12B8-12BE 12C0 12C2-12C5 12C8-12D6 12D8-1310 1312-1315 1318-135A 1380-138F 13A0-13F4 1401-166C "
    "166F-167F 1681-169A 16A0-16EA 1700-170C 170E-1711 1720-1731 1740-1751 1760-176C 176E-1770 1780-17B3 17D7 "
    "17DC 1820-1877 1880-18A8 18AA 18B0-18F5 1900-191C 1950-196D 1970-1974 1980-19AB 19C1-19C7 1A00-1A16 "
    "1A20-1A54 1AA7 1B05-1B33 1B45-1B4B 1B83-1BA0 1BAE-1BAF 1BBA-1BE5 1C00-1C23 1C4D-1C4F 1C5A-1C7D 1CE9-1CEC "
    "1CEE-1CF1 1CF5-1CF6 1D00-1DBF 1E00-1F15 1F18-1F1D 1F20-1F45 1F48-1F4D 1F50-1F57 1F59 1F5B 1F5D 1F5F-1F7D "
    "1F80-1FB4 1FB6-1FBC 1FBE 1FC2-1FC4 1FC6-1FCC 1FD0-1FD3 1FD6-1FDB 1FE0-1FEC 1FF2-1FF4 1FF6-1FFC 2071 207F "
    "2090-209C 2102 2107 210A-2113 2115 2119-211D 2124 2126 2128 212A-212D 212F-2139 213C-213F 2145-2149 214E "
    "2183-2184 2C00-2C2E 2C30-2C5E 2C60-2CE4 2CEB-2CEE 2CF2-2CF3 2D00-2D25 2D27 2D2D 2D30-2D67 2D6F 2D80-2D96 "
    "2DA0-2DA6 2DA8-2DAE 2DB0-2DB6 2DB8-2DBE 2DC0-2DC6 2DC8-2DCE 2DD0-2DD6 2DD8-2DDE 2E2F 3005-3006 3031-3035 "
    "303B-303C 3041-3096 309D-309F 30A1-30FA 30FC-30FF 3105-312D 3131-318E 31A0-31BA 31F0-31FF 3400-4DB5 "
    "4E00-9FCC A000-A48C A4D0-A4FD A500-A60C A610-A61F A62A-A62B A640-A66E A67F-A697 A6A0-A6E5 A717-A71F "
    "A722-A788 A78B-A78E A790-A793 A7A0-A7AA A7F8-A801 A803-A805 A807-A80A A80C-A822 A840-A873 A882-A8B3 "
    "A8F2-A8F7 A8FB A90A-A925 A930-A946 A960-A97C A984-A9B2 A9CF AA00-AA28 AA40-AA42 AA44-AA4B AA60-AA76 AA7A "
    "AA80-AAAF AAB1 AAB5-AAB6 AAB9-AABD AAC0 AAC2 AADB-AADD AAE0-AAEA AAF2-AAF4 AB01-AB06 AB09-AB0E AB11-AB16 "
    "AB20-AB26 AB28-AB2E ABC0-ABE2 AC00-D7A3 D7B0-D7C6 D7CB-D7FB F900-FA6D FA70-FAD9 FB00-FB06 FB13-FB17 FB1D "
    "FB1F-FB28 FB2A-FB36 FB38-FB3C FB3E FB40-FB41 FB43-FB44 FB46-FBB1 FBD3-FD3D FD50-FD8F FD92-FDC7 FDF0-FDFB "
    "FE70-FE74 FE76-FEFC FF21-FF3A FF41-FF5A FF66-FFBE FFC2-FFC7 FFCA-FFCF FFD2-FFD7 FFDA-FFDC")
_DIGIT_RANGES = (
    "0030-0039 0660-0669 06F0-06F9 07C0-07C9 0966-096F 09E6-09EF 0A66-0A6F 0AE6-0AEF 0B66-0B6F 0BE6-0BEF "
    "0C66-0C6F 0CE6-0CEF 0D66-0D6F 0E50-0E59 0ED0-0ED9 0F20-0F29 1040-1049 1090-1099 17E0-17E9 1810-1819 "
    "1946-194F 19D0-19D9 1A80-1A89 1A90-1A99 1B50-1B59 1BB0-1BB9 1C40-1C49 1C50-1C59 A620-A629 A8D0-A8D9 "
    "A900-A909 A9D0-A9D9 AA50-AA59 ABF0-ABF9 FF10-FF19")


def _code_points(ranges: str) -> list[int]:
    """Code points of space-separated hex values and ranges ("0041-005A 00AA ...")."""
    out: list[int] = []
    for item in ranges.split():
        first, _, last = item.partition("-")
        out.extend(range(int(first, 16), int(last or first, 16) + 1))
    return out


def _class_body(code_points: Iterable[int]) -> str:
    """Regex class body (ranges of \\uXXXX) matching exactly `code_points`."""
    out: list[str] = []
    cps = sorted(code_points)
    i = 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        out.append(f"\\u{cps[i]:04x}" + ("" if i == j else f"-\\u{cps[j]:04x}"))
        i = j + 1
    return "".join(out)


def _ci(alternatives: str) -> str:
    return f"(?i:{alternatives})"  # JFlex %caseless applies to literals only, so only literals get (?i:)


_LETTERS = _code_points(_LETTER_RANGES)
_LET, _DIG = _class_body(_LETTERS), _class_body(_code_points(_DIGIT_RANGES))
# only ABBREV1's look-ahead tests it, and both of that rule's outcomes tokenize alike once punctuation is removed
_UPPER = _class_body(cp for cp in _LETTERS if unicodedata.category(chr(cp)) == "Lu")
DIGIT = f"[{_DIG}]"
_LET_EXTRA = (r"\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF\u0300-\u036F\u0370-\u037D\u0384\u0385"
              r"\u03CF\u03F6\u03FC-\u03FF\u0483-\u0487\u04CF\u04F6-\u04FF\u0510-\u0525\u055A-\u055F\u0591-\u05BD"
              r"\u05BF\u05C1\u05C2\u05C4\u05C5\u05C7\u0615-\u061A\u063B-\u063F\u064B-\u065E\u0670\u06D6-\u06EF"
              r"\u06FA-\u06FF\u070F\u0711\u0730-\u074F\u0750-\u077F\u07A6-\u07B1\u07CA-\u07F5\u07FA\u0900-\u0903"
              r"\u093C\u093E-\u094E\u0951-\u0955\u0962-\u0963\u0981-\u0983\u09BC-\u09C4\u09C7\u09C8\u09CB-\u09CD"
              r"\u09D7\u09E2\u09E3\u0A01-\u0A03\u0A3C\u0A3E-\u0A4F\u0A81-\u0A83\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2"
              r"\u0BC6-\u0BC8\u0BCA-\u0BCD\u0C01-\u0C03\u0C3E-\u0C56\u0D3E-\u0D44\u0D46-\u0D48\u0E30-\u0E3A"
              r"\u0E47-\u0E4E\u0EB1-\u0EBC\u0EC8-\u0ECD")
LETTER = rf"(?:[{_LET}{_LET_EXTRA}]|&[aeiouAEIOU]{_ci('acute|grave|uml')};)"
LD = rf"[{_LET}{_DIG}]"
SP = r"[ \t\u00A0\u2000-\u200A\u3000]"
NL = r"(?:\r\n|[\n\r\u2028\u2029\x0b\x0c\x85])"
SPNL = rf"(?:{SP}|{NL})"
SGML = (r"<(?:[!?][A-Za-z\-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:.\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\-]*[ ]*=[ ]*"
        r"(?:'[^']*'|\"[^\"]*\")|[A-Za-z][A-Za-z0-9_:.\-]*))*[ ]*/?|/[A-Za-z][A-Za-z0-9_:.\-]*)[ ]*>")
APOS = rf"(?:['\u0092\u2019]|&{_ci('apos')};)"
APOSX = rf"(?:{APOS}|[`\u0091\u2018\u201B])"
WORD = rf"{LETTER}(?:{LETTER}|{DIGIT})*(?:[.!?]{LETTER}(?:{LETTER}|{DIGIT})*)*"
REDAUX = rf"{APOS}(?:[msdMSD]|{_ci('re|ve|ll')})"
SREDAUX = rf"{_ci('n')}{APOSX}{_ci('t')}"
NUMBER = rf"[\-+]?(?:{DIGIT}*(?:[.:,\u00AD\u066B\u066C]{DIGIT}+)+|{DIGIT}+)"
HYPHEN = r"[\-_\u058A\u2010\u2011]"
THING = rf"(?:[dDoOlL]{APOSX}{LD})?{LD}+(?:{HYPHEN}(?:[dDoOlL]{APOSX}{LD})?{LD}+)*"
ACRO_SPECIAL = [_ci(r"U\.S\.-(?:U\.K|U\.S\.S\.R)"), _ci("Canada|Sino|Korean|EU|Japan|non") + "-" + _ci(r"U\.S")]
ACRO_ALTS = ACRO_SPECIAL + [r"[A-Za-z](?:\.[A-Za-z])*"]
ACRO2 = "(?:" + "|".join(ACRO_SPECIAL + [r"[A-Za-z](?:\.[A-Za-z])+"]) + ")"
HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:{ACRO2}\.|[A-Za-z0-9\u00AD]+))+"
THINGA = rf"[A-Z]+(?:(?:[+&]|&{_ci('amp')};)[A-Z]+)+"
ABBREV1 = ("(?:" + "|".join([
    _ci("Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|Mon|Tue|Tues|Wed|Thu|Thurs|Fri"),
    _ci("Ala|Ariz|Calif|Colo|Conn|Ct|Dak|Fla|Ga|Ind|Kans?|Ky|Md|Mich|Minn|Mo|Mont|Neb|Nev|Okla|Penn|Tenn|Va|Vt"
        "|Wisc?|Wyo"),
    "A" + _ci("z|rk"), "D" + _ci("el"), "I" + _ci("ll"), "L" + _ci("a"), "M" + _ci("ass|iss"), "O" + _ci("re"),
    "P" + _ci("a"), "T" + _ci("ex"), "W" + _ci("ash"),
    _ci("Inc|Cos?|Corp|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys"), _ci("Pp?t") + "[ye]" + _ci("s") + "?",
    _ci(r"tel|est|ext|sq|Jr|Sr|Bros|(?:Ed|Ph)\.D|Blvd|Rd|Esq|etc|al|seq|Bldg")]) + r")\.")
ABBREV4_ALTS = [
    _ci("Mr|Mrs|Ms|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt|Capt|Ste?|Ave"
        "|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp|Mlle|Mme|Msgr|Sfc"),
    "M" + _ci("iss"), _ci(r"vs|Alex|Wm|Jos|Cie|a\.k\.a|cf|TREAS|Ph|Invt|Elec|Natl|Dept"), *ACRO_ALTS,
    _ci("M") + "[ft]" + _ci("g")]
_SENT_WORDS = ("About According Additionally After An A As At But Earlier He Her Here However If In It Last Many More "
               "Mr. Ms. Now Once One Other Our She Since So Some Such That The Their Then There These They This We "
               "When While What Yet You").split()
ACRONYM_NEXT = (rf"{SPNL}+(?:" + "|".join(w[0] + _ci(re.escape(w[1:])) for w in _SENT_WORDS) + rf"|{SGML}){SPNL}")
MISCSYMBOL = ("[+%&~^|\\\\\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00BA\u00D7\u00F7\u0387\u05BE\u05C0"
              "\u05C3\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E\u066A\u066D\u0703-\u070D"
              "\u07F6-\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017\u2020-\u2023\u2030-\u2038\u203B\u203E-\u2042\u2044"
              "\u207A-\u207F\u208A-\u208E\u2100-\u214F\u2190-\u21FF\u2200-\u2BFF\u3012\u30FB\uFF01-\uFF0F"
              "\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65]")
QUOTES = [APOS, "''", (r"[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A"
          r"\u00AB\u00BB]{1,2}")]
INSENTP = r"[,;:\u3001]"
URLCH = r"[^ \t\n\f\r\"<>|(){}"  # shared head of the URL/e-mail negated classes
URLPATH = r"/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-]"
EMAILPART = r"[^ \t\n\f\r\"<>|(){}.\u00A0]+"

# The PTBLexer rules in source order: (alternatives, trailing context or None, action). Top-level
# alternations are split so each is matched on its own and the longest wins, as in a DFA.
_RULE_SPECS: list[tuple[list[str], str | None, str | None]] = [
    ([_ci(r"c\+\+"), _ci("[cf]") + "#"], None, None),
    ([_ci("cannot")], None, "push3"), ([_ci("'twas")], None, "push3"), ([_ci("'tis")], None, "push2"),
    ([_ci("gonna|gotta|lemme|gimme|wanna")], None, "push2"),
    ([SGML], None, "nbsp"),
    ([_ci("&(?:MD|mdash|ndash);"), "[\u0096\u0097\u2013\u2014\u2015]"], None, "=--"),
    ([_ci("&amp;")], None, "amp"),
    ([_ci("&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);")], None, None),
    ([WORD], REDAUX, "soft"),
    ([r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*"], SREDAUX, "soft"),
    ([WORD], None, "soft"),
    ([rf"{APOS}{_ci('n')}{APOS}?", rf"[lLdDjJ]{APOS}", _ci("Dunkin|somethin|ol") + APOS, rf"{APOS}{_ci('em')}",
      rf"[A-HJ-XZn]{APOSX}[{_LET}]{{2}}[{_LET}]*", rf"{APOS}[2-9]0{_ci('s')}", rf"{APOS}{_ci('till?')}",
      rf"[{_LET}]+[aeiouyAEIOUY]{APOSX}[aeiouA-Z][{_LET}]*", rf"{APOS}{_ci('cause')}", _ci(r"cont'd\.?"),
      _ci("'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l"), _ci("O") + APOSX + _ci("o")], None, None),
    ([rf"[yY]{APOS}"], rf"[{_LET}]", None),
    ([_ci("https?") + rf"://{URLCH}]+[^ \t\n\f\r\"<>|.!?(){{}},-]"], None, None),
    ([f"{host}{path}" for host in (_ci("www") + r"\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}",
                                   rf"(?:[^ \t\n\f\r\"`'<>|.!?(){{}},-_$]+\.)+{_ci('com|net|org|edu')}")
      for path in ("", URLPATH)], None, None),
    ([rf"(?:&{_ci('lt')};|<)?[a-zA-Z0-9]{URLCH}\u00A0]*@(?:{EMAILPART}\.)*{EMAILPART}(?:&{_ci('gt')};|>)?"],
     None, None),
    ([r"@[a-zA-Z_][a-zA-Z_0-9]*", rf"#{LETTER}+"], None, None),
    ([REDAUX], "[^A-Za-z]", "qR"), ([SREDAUX], "[^A-Za-z]", "qR"),
    ([rf"{DIGIT}{{1,2}}[\-/]{DIGIT}{{1,2}}[\-/]{DIGIT}{{2,4}}"], None, None),
    ([NUMBER], None, "soft"),
    ([r"[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)"], None, None),
    ([rf"(?:{DIGIT}{{1,4}}[- \u00A0])?{DIGIT}{{1,4}}(?:\\?/|\u2044){DIGIT}{{1,4}}"], None, "nbsp"),
    ([r"[\u00BC\u00BD\u00BE\u2153-\u215E]"], None, "frac"),
    ([_ci("-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\\.D\\.s|pro-|anti-"), _ci("S(?:&|&amp;)P-500|S(?:&|&amp;)Ls"),
      _ci("Cap") + APOS + _ci("n"), _ci("c") + APOS + _ci("est")], None, "amp"),
    ([r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"], None, None),
    ([r"[A-Z]*\$|#"], None, None),
    (["[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]"], None, "cur"),
    ([a + r"\." for a in ACRO_ALTS], ACRONYM_NEXT, "acro"),
    ([_ci(r"(?:ca|figs?|prop|nos?|art|bldg|pp|op)\.")], rf"{SPNL}?{DIGIT}", None),
    ([_ci(r"(?:pt[ey]|co)\.")], SP + _ci("ltd|lim"), None),
    ([ABBREV1], rf"{SPNL}(?:{SPNL}|[{_UPPER}]|{SGML})", "period"),
    ([ABBREV1], r"[\s\S]{2}", None),
    ([ABBREV1], None, "period"),
    ([a + r"\." for a in ABBREV4_ALTS], None, None),
    (ABBREV4_ALTS, SP, None),
    (ACRO_ALTS, SPNL, None),
    ([rf"{APOS}[0-9][0-9]"], SPNL, None),
    ([rf"(?:{LETTER}|{DIGIT})+(?:\.(?:{LETTER}|{DIGIT})+)*\."
      + _ci("bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png"
            "|ppt|ps|py|sql|tar|txt|wav|x|xml|zip")], rf"{SPNL}|[.?!,]", None),
    ([WORD + r"\."], INSENTP, "soft"),
    ([r"(?:\([0-9]{2,3}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00A0])?[0-9]{2,4}[\- \u00A0])[0-9]{3,4}"
      r"[\- \u00A0]?[0-9]{3,5}", r"(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}"], None, "phone"),
    ([r"\"|&" + _ci("quot") + ";"], "[A-Za-z0-9$]", "qL"), ([r"\"|&" + _ci("quot") + ";"], None, "qR"),
    (["\x7f"], None, "skip"),
    ([r"<|&" + _ci("lt") + ";"], None, "=<"), ([r">|&" + _ci("gt") + ";"], None, "=>"),
    ([r"[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]]"], "[^A-Za-z0-9]", "paren"),
    ([r"[\^x=~<>]\.\[\^" + _ci("x") + r"=~<>\]", r"[\-\^x=~<>']_[\-\^x=~<>']",
      r"\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)", r"\([\^x=~<>']-[\^x=~<>'`]\)"], None, "paren"),
    ([r"\{"], None, "=-LCB-"), ([r"\}"], None, "=-RCB-"), ([r"\["], None, "=-LSB-"), ([r"\]"], None, "=-RSB-"),
    ([r"\("], None, "=-LRB-"), ([r"\)"], None, "=-RRB-"),
    ([r"-+"], None, "dashes"),
    ([r"\.{3,5}", r"(?:\.[ \u00A0]){2,4}\.", "[\u0085\u2026]"], None, "=..."),
    ([r"@+", r"#+", r"_+"], None, None), ([r"\*+", r"(?:\\\*){1,3}"], None, None),
    ([INSENTP], None, None), ([r"[?!]+"], None, None),
    (["[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]"], None, None),
    ([r"="], None, None), ([r"/"], None, None),
    ([HTHING + r"\."], INSENTP, "soft"), ([HTHING], None, "soft"),
    ([THING + r"\."], INSENTP, None), ([THING], None, None),
    ([THINGA + r"\."], INSENTP, "amp"), ([THINGA], None, "amp"),
    (["'"], "[A-Za-z][^ \t\n\r\u00A0]", "qL"),
    ([REDAUX], None, "qR"), ([SREDAUX], None, "qR"), (QUOTES, None, "qR"),
    ([r"<<|>>"], None, None), ([MISCSYMBOL], None, None),
    ([rf"\x00|{SP}+|[\u200B\u200E\u200F\uFEFF]"], None, "skip"),
    ([NL], None, "newline"),
    ([_ci("&nbsp;")], None, "skip"),
    ([r"[^\n]"], None, "skip"),  # untokenizable: CoreNLP's default deletes it
]
_RULES = [([re.compile(f"(?P<a>{alt})" + (f"(?=(?P<b>{la}))" if la else "(?P<b>)")) for alt in alts], action)
          for alts, la, action in _RULE_SPECS]
# Fast path for the bulk of caption text: blanks, and plain words (with a trailing , ; : or sentence period)
# that no rule can extend; words that could be abbreviations or assimilations take the full rule set.
_FAST = re.compile(rf"(?P<blank>[ \t]{SP}*)|(?P<word>[A-Za-z]+)(?P<punct>[,;:]|\.(?![ \t]\.))?(?=[ \t\n]|\Z)")
_NOT_FAST = re.compile("|".join([ABBREV1, *(a + r"\." for a in ABBREV4_ALTS), _ci(r"(?:ca|figs?|prop|nos?|art|bldg"
                                 r"|pp|op|pt[ey]|co)\."), _ci("cannot|gonna|gotta|lemme|gimme|wanna")]))
_ASTRAL, _SURROGATE = re.compile("[\U00010000-\U0010FFFF]"), re.compile("[\ud800-\udfff]")
_QUOTE_SUBS = [(re.compile("[\u0091\u2018\u201B\u2039]"), "`"), (re.compile("[\u0092\u2019\u203A]"), "'"),
               (re.compile("[\u0093\u201C\u00AB]"), "``"), (re.compile("[\u0094\u201D\u00BB]"), "''")]
_FRACTIONS = {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_CURRENCY = {"\u00A2": "cents", "\u00A3": "#", "\u0080": "$", "\u00A4": "$", "\u20A0": "$", "\u20AC": "$"}


def _to_surrogates(m: re.Match) -> str:
    high, low = divmod(ord(m.group()) - 0x10000, 0x400)
    return chr(0xD800 + high) + chr(0xDC00 + low)


def _latex_quotes(text: str, left: bool) -> str:
    text = re.sub("&apos;|'", "`" if left else "'", text)
    text = re.sub('"|&quot;', "``" if left else "''", text)
    for pattern, repl in _QUOTE_SUBS:
        text = pattern.sub(repl, text)
    return text


_TRANSFORMS = {
    "soft": lambda t: t.replace("\u00AD", "") or "-",  # soft hyphens are dropped, never leaving an empty token
    "amp": lambda t: re.sub("(?i:&amp;)", "&", t),
    "qL": lambda t: _latex_quotes(t, True), "qR": lambda t: _latex_quotes(t, False),
    "nbsp": lambda t: t.replace(" ", "\u00A0"),
    "paren": lambda t: t.replace("(", "-LRB-").replace(")", "-RRB-"),
    "phone": lambda t: t.replace(" ", "\u00A0").replace("(", "-LRB-").replace(")", "-RRB-"),
    "frac": lambda t: _FRACTIONS.get(t, t), "cur": lambda t: _CURRENCY.get(t, t),
    "dashes": lambda t: "--" if 3 <= len(t) <= 4 else t,
    "skip": lambda t: None,
    "newline": lambda t: "\n" if "\n" in t else None,  # only the joins between captions end a line
}


def _act(action: str | None, text: str) -> tuple[str | None, int]:
    """The token a rule emits (None: none) and how many characters it consumes (JFlex yypushback)."""
    if action is None:
        return text, len(text)
    if action.startswith("="):
        return action[1:], len(text)
    if action in ("push3", "push2"):
        keep = len(text) - int(action[-1])
        return text[:keep], keep
    if action == "period":  # the abbreviation is emitted whole and its period lexed again
        return text, len(text) - 1
    if action == "acro":  # one letter + period: the letter alone; longer: the whole acronym, then the period again
        return (text[:1], 1) if len(text) == 2 else (text, len(text) - 1)
    return _TRANSFORMS[action](text), len(text)


def _lex(text: str) -> list[list[str]]:
    """Tokens of each '\\n'-separated line, lowercased, as `PTBTokenizer -preserveLines -lowerCase` prints them."""
    lines: list[list[str]] = [[]]
    pos = 0
    while pos < len(text):
        fast = _FAST.match(text, pos)
        if fast and (fast["blank"] or not (_NOT_FAST.fullmatch(fast["word"])
                                           or fast["punct"] == "." and _NOT_FAST.fullmatch(fast["word"] + "."))):
            if fast["word"]:
                lines[-1].append(fast["word"].lower())
                if fast["punct"]:
                    lines[-1].append(fast["punct"])
            pos = fast.end()
            continue
        best_len, best = 0, None
        for regexes, action in _RULES:
            for regex in regexes:
                m = regex.match(text, pos)
                if m and m.end("b") - pos > best_len:
                    best_len, best = m.end("b") - pos, (action, m.group("a"))
        token, consumed = _act(*best)
        pos += consumed
        if token == "\n":
            lines.append([])
        elif token is not None:
            if _SURROGATE.search(token):
                token = token.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
            lines[-1].append(token.lower())
    return lines


def _ptb_lines(captions: list[str]) -> list[list[str]]:
    text = "\n".join(c.replace("\n", " ") for c in captions)
    # Java lexes UTF-16 code units, so a character beyond the BMP is seen as two surrogates
    lines = _lex(_ASTRAL.sub(_to_surrogates, text))
    assert len(lines) == len(captions), "the lexer must keep one line per caption"
    return lines


def ptb_tokenize_batch(captions: list[str]) -> list[str]:
    """Tokenize captions exactly as pycocoevalcap's PTBTokenizer does for one call (one newline-joined stream)."""
    # The toolkit splits the printed line after rstrip(), which also eats Unicode whitespace (U+3000, U+202F,
    # \x1f, ...) that the lexer left at the end of a line's last token, e.g. inside an e-mail or URL token.
    return [" ".join(t for t in " ".join(line).rstrip().split(" ") if t not in PUNCTUATIONS)
            for line in _ptb_lines(captions)]


def ptb_tokenize(text: str) -> str:
    """Tokenize one caption as pycocoevalcap does (lowercased PTB tokens, its punctuation list removed)."""
    return ptb_tokenize_batch([text])[0]


def _ngram_counts(words: list[str], n: int = 4) -> Counter:
    # insertion order (1-grams first, left to right) matters: CIDEr sums floats in this order
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


def _bleu(refs: list[list[str]], hyps: list[str], n: int = 4) -> tuple[list[float], list[list[float]]]:
    """Corpus and per-image BLEU-1..n with the 'closest' reference length, as pycocoevalcap's BleuScorer."""
    small, tiny = 1e-9, 1e-15  # the toolkit's smoothing, which also keeps empty captions finite
    total_guess, total_correct, total_test, total_ref = [0] * n, [0] * n, 0, 0
    per_image: list[list[float]] = [[] for _ in range(n)]
    for ref_list, hyp in zip(refs, hyps):
        max_counts: dict = {}
        ref_lens = []
        for ref in ref_list:
            words = ref.split()
            ref_lens.append(len(words))
            for ngram, count in _ngram_counts(words, n).items():
                max_counts[ngram] = max(max_counts.get(ngram, 0), count)
        words = hyp.split()
        test_len = len(words)
        ref_len = min((abs(length - test_len), length) for length in ref_lens)[1]  # ties go to the shorter
        guess = [max(0, test_len - k + 1) for k in range(1, n + 1)]
        correct = [0] * n
        for ngram, count in _ngram_counts(words, n).items():
            correct[len(ngram) - 1] += min(max_counts.get(ngram, 0), count)
        total_test, total_ref = total_test + test_len, total_ref + ref_len
        bleu = 1.0
        for k in range(n):
            total_guess[k] += guess[k]
            total_correct[k] += correct[k]
            bleu *= (float(correct[k]) + tiny) / (float(guess[k]) + small)
            per_image[k].append(bleu ** (1.0 / (k + 1)))
        ratio = (test_len + tiny) / (ref_len + small)
        if ratio < 1:
            for k in range(n):
                per_image[k][-1] *= math.exp(1 - 1 / ratio)
    corpus, bleu = [], 1.0
    for k in range(n):
        bleu *= float(total_correct[k] + tiny) / (total_guess[k] + small)
        corpus.append(bleu ** (1.0 / (k + 1)))
    ratio = (total_test + tiny) / (total_ref + small)
    if ratio < 1:
        corpus = [b * math.exp(1 - 1 / ratio) for b in corpus]
    return corpus, per_image


def _lcs(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def _rouge_l(refs: list[str], hyp: str, beta: float = 1.2) -> float:
    """ROUGE-L F-measure against the best-precision and best-recall references, as pycocoevalcap's Rouge."""
    cand = hyp.split(" ")  # split(" "), not split(): an empty caption is one empty token there
    prec, rec = [], []
    for ref in refs:
        tokens = ref.split(" ")
        lcs = _lcs(tokens, cand)
        prec.append(lcs / float(len(cand)))
        rec.append(lcs / float(len(tokens)))
    p, r = max(prec), max(rec)
    return ((1 + beta ** 2) * p * r) / float(r + beta ** 2 * p) if p != 0 and r != 0 else 0.0


def _cider_d(refs: list[list[str]], hyps: list[str], n: int = 4, sigma: float = 6.0) -> np.ndarray:
    """Per-image CIDEr-D (x10), idf from the references of the scored images, as pycocoevalcap's CiderScorer."""
    ref_counts = [[_ngram_counts(r.split(), n) for r in ref_list] for ref_list in refs]
    doc_freq: Counter = Counter()
    for counts in ref_counts:
        doc_freq.update({ngram for c in counts for ngram in c})
    log_images = np.log(float(len(ref_counts)))

    def vectorize(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for ngram, tf in counts.items():
            k = len(ngram) - 1
            vec[k][ngram] = float(tf) * (log_images - np.log(max(1.0, float(doc_freq.get(ngram, 0)))))
            norm[k] += pow(vec[k][ngram], 2)
            if k == 1:  # the toolkit's "length" counts bigrams, so its length penalty does too
                length += tf
        return vec, [np.sqrt(x) for x in norm], length

    scores = []
    for counts, hyp in zip(ref_counts, hyps):
        vec, norm, length = vectorize(_ngram_counts(hyp.split(), n))
        total = np.zeros(n)
        for ref in counts:
            vec_r, norm_r, length_r = vectorize(ref)
            delta = float(length - length_r)
            val = np.zeros(n)
            for k in range(n):
                for ngram, weight in vec[k].items():
                    ref_weight = vec_r[k].get(ngram, 0.0)
                    val[k] += min(weight, ref_weight) * ref_weight  # clipping, the "-D" of CIDEr-D
                if norm[k] != 0 and norm_r[k] != 0:
                    val[k] /= norm[k] * norm_r[k]
                val[k] *= np.e ** (-(delta ** 2) / (2 * sigma ** 2))
            total += val
        scores.append(np.mean(total) / len(counts) * 10.0)
    return np.array(scores)


def _toolkit_dir() -> Path | None:
    env = os.environ.get("PYCOCOEVALCAP_DIR")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("pycocoevalcap")
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def available_java_metrics() -> list[str]:
    """METEOR / SPICE when Java and the installed pycocoevalcap's jars (or $PYCOCOEVALCAP_DIR) are present."""
    root = _toolkit_dir()
    if root is None or shutil.which("java") is None:
        return []
    jars = {"METEOR": ["meteor/meteor-1.5.jar"],
            "SPICE": ["spice/spice-1.0.jar", "spice/lib/stanford-corenlp-3.6.0.jar",
                      "spice/lib/stanford-corenlp-3.6.0-models.jar"]}
    return [name for name, paths in jars.items() if all((root / p).is_file() for p in paths)]


def _meteor(refs: list[list[str]], hyps: list[str]) -> tuple[float, list[float]]:
    """METEOR 1.5 through its stdio protocol, as pycocoevalcap's Meteor wrapper drives it."""
    jar = _toolkit_dir() / "meteor" / "meteor-1.5.jar"
    cmd = ["java", "-jar", "-Xmx2G", jar.name, "-", "-", "-stdio", "-l", "en", "-norm"]
    with subprocess.Popen(cmd, cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, encoding="utf-8") as proc:
        stats = []
        for ref_list, hyp in zip(refs, hyps):
            hyp = hyp.replace("|||", "").replace("  ", " ")
            proc.stdin.write(" ||| ".join(["SCORE", " ||| ".join(ref_list), hyp]) + "\n")
            proc.stdin.flush()
            stats.append(proc.stdout.readline().strip())
        proc.stdin.write(" ||| ".join(["EVAL", *stats]) + "\n")
        proc.stdin.flush()
        per_image = [float(proc.stdout.readline().strip()) for _ in hyps]
        corpus = float(proc.stdout.readline().strip())
        proc.stdin.close()
    return corpus, per_image


def _spice(image_ids: list[Any], refs: list[list[str]], hyps: list[str]) -> tuple[float, list[float]]:
    """SPICE 1.0 (all-tuples F-score) through its jar, as pycocoevalcap's Spice wrapper runs it."""
    jar = _toolkit_dir() / "spice" / "spice-1.0.jar"
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.json", Path(tmp) / "out.json"
        write_json(src, [{"image_id": i, "test": h, "refs": r} for i, r, h in zip(image_ids, refs, hyps)])
        subprocess.run(["java", "-jar", "-Xmx8G", jar.name, str(src), "-out", str(out), "-subset", "-silent"],
                       cwd=jar.parent, check=True)
        results = json.loads(out.read_text())
    by_id = {item["image_id"]: item["scores"]["All"]["f"] for item in results}
    as_float = [float("nan") if by_id.get(i) is None else float(by_id[i]) for i in image_ids]
    corpus = float(np.mean([float("nan") if item["scores"]["All"]["f"] is None else item["scores"]["All"]["f"]
                            for item in results]))
    return corpus, as_float


def score_captions(references: Mapping[Any, list[str]], predictions: Mapping[Any, str]
                   ) -> tuple[dict[str, float], dict[Any, dict[str, float]]]:
    """COCOEvalCap metrics over the predicted images: (corpus metrics, per-image metrics)."""
    unknown = [k for k in predictions if k not in references]
    if unknown:
        raise ValueError(f"predictions for {len(unknown)} image ids without references, e.g. {unknown[:5]}")
    image_ids = [k for k in references if k in predictions]  # reference order, as the toolkit's image list
    if not image_ids:
        raise ValueError("no predictions to score")
    for k in image_ids:
        if not isinstance(predictions[k], str):
            raise ValueError(f"prediction for image {k!r} is not a string: {predictions[k]!r}")
        if not references[k] or not all(isinstance(c, str) for c in references[k]):
            raise ValueError(f"references for image {k!r} must be a non-empty list of strings")
    flat = ptb_tokenize_batch([c for k in image_ids for c in references[k]])
    refs, start = [], 0
    for k in image_ids:
        refs.append(flat[start:start + len(references[k])])
        start += len(references[k])
    hyps = ptb_tokenize_batch([predictions[k] for k in image_ids])

    metrics: dict[str, float] = {}
    per_image: dict[Any, dict[str, float]] = {k: {} for k in image_ids}

    def record(name: str, corpus: float, scores: Iterable[float]) -> None:
        metrics[name] = float(corpus)
        for k, value in zip(image_ids, scores):
            per_image[k][name] = float(value)

    bleu, bleu_images = _bleu(refs, hyps)
    for k in range(4):
        record(f"Bleu_{k + 1}", bleu[k], bleu_images[k])
    java = available_java_metrics()
    if "METEOR" in java:
        record("METEOR", *_meteor(refs, hyps))
    rouge = np.array([_rouge_l(r, h) for r, h in zip(refs, hyps)])
    record("ROUGE_L", np.mean(rouge), rouge)
    cider = _cider_d(refs, hyps)
    record("CIDEr", np.mean(cider), cider)
    if "SPICE" in java:
        record("SPICE", *_spice(image_ids, refs, hyps))
    return metrics, per_image


def _check_caption_records(path: str | os.PathLike, records: list, name: str) -> None:
    """Each record (of annotations or results) must be an object with a str caption and an int or str image_id."""
    for i, record in enumerate(records):
        for field in ("image_id", "caption"):
            if not isinstance(record, dict) or field not in record:
                raise ValueError(f"{path}: {name}[{i}] has no '{field}'")
        if not isinstance(record["caption"], str):
            raise ValueError(f"{path}: {name}[{i}].caption is not a string")
        if not isinstance(record["image_id"], (int, str)):
            raise ValueError(f"{path}: {name}[{i}].image_id must be an integer or a string")


def load_coco_annotations(path: str | os.PathLike) -> dict[Any, list[str]]:
    """Official captions_*.json -> {image_id: [captions]} in the file's image order, as the COCO toolkit reads it."""
    data = read_json_file(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: expected an object with an 'annotations' list (COCO captions format)")
    _check_caption_records(path, data["annotations"], "annotations")
    captions: dict[Any, list[str]] = {}
    for ann in data["annotations"]:
        captions.setdefault(ann["image_id"], []).append(ann["caption"])
    images = data.get("images", [])
    if not isinstance(images, list) or not all(isinstance(im, dict) and "id" in im for im in images):
        raise ValueError(f"{path}: 'images' must be a list of objects with an 'id'")
    order = [im["id"] for im in images if im["id"] in captions]
    order += [k for k in captions if k not in set(order)]
    return {k: captions[k] for k in order}


def load_coco_results(path: str | os.PathLike, annotations: Mapping[Any, list[str]] | None = None
                      ) -> dict[Any, str]:
    """Results file [{image_id, caption}] -> {image_id: caption}; checked against `annotations` when given."""
    data = read_json_file(path)
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty list of {{'image_id', 'caption'}} objects")
    _check_caption_records(path, data, "results")
    results: dict[Any, str] = {}
    for i, res in enumerate(data):
        if res["image_id"] in results:  # the toolkit fails on these (one caption per image is asserted)
            raise ValueError(f"{path}: results[{i}]: duplicate image_id {res['image_id']!r}")
        results[res["image_id"]] = res["caption"]
    if annotations is not None:
        unknown = [k for k in results if k not in annotations]
        if unknown:
            raise ValueError(f"{path}: image_id not in the annotations for {len(unknown)} results, "
                             f"e.g. {unknown[:5]}")
        skipped = sum(1 for k in annotations if k not in results)
        if skipped:
            logger.info("%d annotated images have no result and are not scored (as in COCOEvalCap)", skipped)
    return results
