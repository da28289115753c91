"""Words that know the catalogue: the parts of a query that name an attribute value.

"Like this, but in red" names a value the catalogue already holds (colour = Red). A sentence
embedding of the whole query lets the word *red* compete with every other word; the catalogue's
own attributes say exactly which items are red. :func:`understand` splits a query into

* ``understood``: column -> values named by the words (``{"colour": ["Red"]}``); several values of
  one column are alternatives (OR), different columns all apply (AND);
* ``free_text``: the words left over, which go to the text model as before ("" when nothing is
  left, and then no text fusion happens at all).

The :class:`Vocabulary` is built from the catalogue's *distinct values* of the columns
``colour``, ``gender`` and ``category`` (the article type), never from a list of one shop's values,
plus a small layer of generic language knowledge:

* every phrase is compared by *key*: lower case, possessive ``'s`` dropped, hyphens and
  apostrophes removed, each word made singular (``Sandals`` / ``sandal``, ``Tshirts`` /
  ``t-shirt`` / ``t shirt`` / ``tshirts``, ``women's`` / ``womens`` / ``women``);
* :data:`SYNONYMS`: groups of words meaning the same (``grey``/``gray``, ``navy``/``navy blue``,
  ``ladies``/``women``, ``tee``/``tshirt``); a group member becomes another name of a catalogue
  value whose key is in the group;
* a category head word shared by several values names them all (``shoes`` -> Casual Shoes,
  Formal Shoes, Sports Shoes).

Phrases match longest first ("navy blue" before "navy", "casual shoes" before "shoes"). Words
are *not* understood, and stay free text, when

* a negation comes right before them (``not``, ``no``, ``without``, ``except``, ``non``);
* they name a colour that is directly followed by a word the vocabulary does not know, and no
  product type follows later ("orange juice print" is a print, not an orange item; "red cotton
  shirt" is still a red shirt);
* their column is switched off (``literal``) or the catalogue has no values in that column (a
  catalogue without colours keeps today's text fusion for colour words).

"black and white" names two colours: both are understood, as alternatives (colour is Black *or*
White), because a catalogue stores one base colour per item.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: The columns whose values words can name, in the order a phrase claimed by several is given to.
COLUMNS = ("category", "colour", "gender")
#: Groups of words that mean the same; generic language knowledge, not one catalogue's values.
#: A member names a catalogue value only when the catalogue holds a value keyed by a member.
SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("grey", "gray"), ("navy", "navy blue"), ("maroon", "burgundy", "wine"),
    ("gold", "golden"), ("purple", "violet"), ("silver", "silvery"),
    ("multi", "multicolour", "multicolor", "multicoloured", "multicolored", "multi colour"),
    ("off white", "offwhite", "ivory"), ("beige", "nude"), ("khaki", "tan"),
    ("women", "woman", "lady", "ladies", "female", "her"), ("men", "man", "male", "gent", "him"),
    ("tshirt", "tee", "teeshirt"), ("trouser", "pant"), ("sweater", "jumper", "pullover"),
    ("sunglass", "shade"), ("watch", "wristwatch"),
)
#: Small words that join a request to its values ("but in red", "for women"); dropped when they
#: stand right before an understood phrase, and a query left with only these has no free text.
FILLERS = frozenset("a an the in for but and or of like this that these those one ones same "
                    "similar please show me find with similarly also instead only some".split())
#: Words that join alternatives of one column ("black and white", "red or blue").
JOINERS = frozenset({"and", "or", "&", "/", ","})
NEGATIONS = frozenset({"not", "no", "without", "except", "non", "never"})
_TOKEN = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*|[&/,]", re.UNICODE)
MAX_PHRASE = 4


def singular(word: str) -> str:
    """A word's singular form by the regular English rules (both sides of a match use it, so an
    irregular result still matches itself): sandals -> sandal, dresses -> dress, ladies -> lady."""
    if len(word) <= 3 or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "zes")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def word_key(word: str) -> str:
    """A word as the vocabulary compares it: lower case, possessive dropped, singular."""
    word = word.lower().replace("’", "'")
    if word == "&":
        return "and"
    if word.endswith("'s"):
        word = word[:-2]
    word = word.replace("'", "").replace("-", "")
    return singular(word)


def phrase_key(text: str) -> str:
    """The key of a phrase: the keys of its words joined by single spaces."""
    return " ".join(word_key(w) for w in _TOKEN.findall(str(text)) if w not in ("/", ","))


@dataclass(frozen=True)
class Vocabulary:
    """Phrase key -> (column, catalogue values), built from one catalogue state.

    ``counts[column][value]`` is how many items hold each value (a query shows them; the search
    fills up from outside the understood values when they hold fewer than ``k`` items).
    """

    phrases: Mapping[str, tuple[str, tuple[str, ...]]]
    counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    state: Any = None

    @classmethod
    def build(cls, values: Mapping[str, Mapping[str, int]], state: Any = None) -> "Vocabulary":
        """A vocabulary from ``column -> {value: item count}`` (see the module docstring)."""
        phrases: dict[str, tuple[str, tuple[str, ...]]] = {}
        for column in COLUMNS:
            column_values = values.get(column) or {}
            names: dict[str, set[str]] = {}
            for value in column_values:
                key = phrase_key(value)
                if key:
                    names.setdefault(key, set()).add(value)
                    names.setdefault(key.replace(" ", ""), set()).add(value)
            aliases: dict[str, set[str]] = {}
            for group in SYNONYMS:
                keys = [phrase_key(member) for member in group]
                held = set().union(*(names.get(k, set()) for k in keys))
                for k in keys:
                    if held and k not in names:
                        aliases.setdefault(k, set()).update(held)
            if column == "category":
                for head, held in _head_words(column_values).items():
                    if head not in names and head not in aliases:
                        aliases[head] = held
            for key, held in {**aliases, **names}.items():
                if key not in phrases:
                    phrases[key] = (column, tuple(sorted(held)))
        counts = {c: {str(v): int(n) for v, n in (values.get(c) or {}).items()} for c in COLUMNS}
        return cls(phrases=phrases, counts=counts, state=state)

    def lookup(self, key: str) -> tuple[str, tuple[str, ...]] | None:
        """The column and values a phrase key names, or None."""
        return self.phrases.get(key) or self.phrases.get(key.replace(" ", ""))

    def columns(self) -> list[str]:
        """The columns this catalogue holds values for."""
        return [c for c in COLUMNS if self.counts.get(c)]


def _head_words(values: Iterable[str]) -> dict[str, set[str]]:
    """Last word of multi-word values -> the values, when two or more values share it."""
    heads: dict[str, set[str]] = {}
    for value in values:
        words = phrase_key(value).split()
        if len(words) > 1:
            heads.setdefault(words[-1], set()).add(value)
    return {head: held for head, held in heads.items() if len(held) > 1}


@dataclass
class Understanding:
    """What the words of a query mean against one catalogue."""

    text: str
    understood: dict[str, list[str]] = field(default_factory=dict)
    free_text: str = ""
    #: The words behind each understood column (``{"colour": ["navy"]}``), for display.
    words: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"understood": {c: list(v) for c, v in self.understood.items()},
                "free_text": self.free_text}


@dataclass
class _Match:
    start: int
    end: int
    column: str
    values: tuple[str, ...]


def understand(text: str, vocabulary: Vocabulary, *, literal: Sequence[str] = ()) -> Understanding:
    """Split ``text`` into understood attribute values and free text (see the module docstring).

    ``literal`` lists columns whose words are not understood (they stay free text).
    """
    tokens = _TOKEN.findall(str(text or ""))
    keys = [word_key(t) for t in tokens]
    matches = _matches(keys, vocabulary, set(literal))
    used = set()
    for match in matches:
        used.update(range(match.start, match.end))
    for match in matches:  # "in red", "for women", "black and white": the joining words go too
        n = match.start - 1
        while n >= 0 and n not in used and (keys[n] in FILLERS or keys[n] in JOINERS):
            used.add(n)
            n -= 1
    rest = [n for n in range(len(tokens)) if n not in used]
    if all(keys[n] in FILLERS or keys[n] in JOINERS for n in rest):
        rest = []
    result = Understanding(text=str(text or ""),
                           free_text=" ".join(tokens[n] for n in rest) if matches else
                           " ".join(str(text or "").split()))
    for match in matches:
        values = result.understood.setdefault(match.column, [])
        values.extend(v for v in match.values if v not in values)
        result.words.setdefault(match.column, []).append(
            " ".join(tokens[match.start:match.end]))
    return result


def _matches(keys: list[str], vocabulary: Vocabulary, literal: set[str]) -> list[_Match]:
    """Longest-first phrase matches, left to right, after the rules that keep words literal."""
    found = [_longest_at(keys, n, vocabulary) for n in range(len(keys))]
    out: list[_Match] = []
    n = 0
    while n < len(keys):
        match = found[n]
        if match is None:
            n += 1
            continue
        keep = (match.column not in literal
                and not (n > 0 and keys[n - 1] in NEGATIONS)
                and not (match.column == "colour" and _colour_names_a_thing(keys, match, found)))
        if keep:
            out.append(match)
        n = match.end
    return out


def _longest_at(keys: list[str], start: int, vocabulary: Vocabulary) -> _Match | None:
    if keys[start] in JOINERS or keys[start] in FILLERS:
        return None
    for length in range(min(MAX_PHRASE, len(keys) - start), 0, -1):
        words = keys[start:start + length]
        if words[-1] in JOINERS or words[-1] in FILLERS or "/" in words or "," in words:
            continue
        hit = vocabulary.lookup(" ".join(words))
        if hit is not None:
            return _Match(start, start + length, hit[0], hit[1])
    return None


def _colour_names_a_thing(keys: list[str], match: _Match, found: list[_Match | None]) -> bool:
    """True when a colour word is directly followed by an unknown word and no product type comes
    later: "orange juice print" is a kind of print, not an orange product."""
    after = match.end
    if after >= len(keys):
        return False
    nxt = keys[after]
    if nxt in FILLERS or nxt in JOINERS or found[after] is not None:
        return False
    return not any(m is not None and m.column == "category" for m in found[after:])


__all__ = ["Vocabulary", "Understanding", "understand", "word_key", "phrase_key", "singular",
           "COLUMNS", "SYNONYMS", "FILLERS"]
