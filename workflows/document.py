"""A document pipeline: read a text file, split it on headings, analyse each section in
parallel, and summarise the whole.

Everything is plain Python with built-in word lists, so the result depends only on the file:
the same document always gives the same summary, which makes the workflow a fair test of
resume and rerun (a re-executed step must reproduce what it stored before).
"""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from pathlib import Path
from typing import Any

from statepipe import StepContext, Workflow

wf = Workflow(
    "document",
    description="Split a text document on '## ' headings, analyse the sections in parallel, summarise",
)

# Workflow files are loaded by path, not as a package: load the shared helper the same way.
_spec = importlib.util.spec_from_file_location("statepipe_examples_files", Path(__file__).with_name("_files.py"))
assert _spec is not None and _spec.loader is not None
files = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(files)

TOP_KEYWORDS_PER_SECTION = 5
TOP_KEYWORDS_OVERALL = 10

STOPWORDS = frozenset(
    """
    a about above after again against all also although am an and any are as at be because been
    before being below between both but by can could did do does doing down during each either
    every few for from further had has have having he her here hers him his how i if in into is
    it its itself just last least less made make many may me more most much must my next no nor
    not now of off on once one only or other our ours out over own per rather same she should
    since so some such than that the their theirs them then there these they this those three
    through to too two under until up upon us used very was we were what when where whether which
    while who whom why will with within without would yet you your
    zero four five six seven eight nine ten eleven twelve twenty thirty forty fifty hundred
    thousand first second third fourth fifth
    """.split()
)

# A deliberately small lexicon: enough to tell a good-news section from a bad-news one.
POSITIVE = frozenset(
    """
    automated best better clear complete completed confident easier encouraging faster good great
    improved improvement improvements improving reduced resolved settled stable strong stronger
    success successful valuable well worthwhile
    """.split()
)
NEGATIVE = frozenset(
    """
    burnout concern confusing critical degraded degradation delayed difficulties errors expiry
    failed failure fails frustrated late noisy outdated painful postponed problem problems
    slow slower stressful unacceptable unhealthy vulnerability worst
    """.split()
)

_TOKEN = re.compile(r"[a-z]+(?:['’-][a-z]+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _content_words(text: str) -> list[str]:
    """Tokens worth counting as keywords: no stopwords, nothing shorter than three letters."""
    return [t for t in _tokens(text) if len(t) >= 3 and t not in STOPWORDS]


def _top(counts: Counter[str], n: int) -> list[dict[str, Any]]:
    """Most frequent first; ties broken alphabetically so the order never depends on input order."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [{"word": w, "count": c} for w, c in ranked]


def _sentences(text: str) -> int:
    return sum(1 for s in _SENTENCE_END.split(text.strip()) if s)


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40] or "section"


def _sentiment(positive: int, negative: int) -> float:
    """Balance of positive and negative lexicon hits, from -1 (all negative) to 1."""
    return round((positive - negative) / (positive + negative), 3) if positive + negative else 0.0


@wf.step
def extract(ctx: StepContext, path: str = "examples/report.txt") -> dict[str, Any]:
    """Read the document; its first '# ' line, if any, is the title."""
    file = files.locate(path, what="document")
    text = file.read_text(encoding="utf-8")
    title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), file.stem)
    ctx.progress(f"read {file.name}: {len(text.split()):,} words")
    return {"source": str(file), "title": title, "text": text}


@wf.step
def sections(ctx: StepContext, extract: dict[str, Any]) -> list[dict[str, Any]]:
    """Split on '## ' headings. Text before the first heading (apart from the title line) becomes
    an "Introduction"; a document without headings is one section named after its title."""
    found: list[dict[str, Any]] = []
    title = "Introduction"
    lines: list[str] = []

    def close() -> None:
        body = "\n".join(lines).strip()
        if body:
            found.append({"index": len(found) + 1, "title": title, "text": body})

    for line in extract["text"].splitlines():
        if line.startswith("## "):
            close()
            title, lines = line[3:].strip(), []
        elif not line.startswith("# "):
            lines.append(line)
    close()
    if len(found) == 1 and found[0]["title"] == "Introduction":
        found[0]["title"] = extract["title"]
    ctx.progress(f"{len(found)} sections: " + ", ".join(s["title"] for s in found))
    return found


@wf.step(map_over=sections, item_key=lambda s: f"{s['index']}-{_slug(s['title'])}")
def analyse(ctx: StepContext, item: dict[str, Any]) -> dict[str, Any]:
    """Count words, sentences, keywords and lexicon hits paragraph by paragraph, streaming a line
    per paragraph so a long section shows its progress."""
    keywords: Counter[str] = Counter()
    words = sentences = positive = negative = 0
    paragraphs = [p for p in re.split(r"\n\s*\n", item["text"]) if p.strip()]
    for n, paragraph in enumerate(paragraphs, 1):
        tokens = _tokens(paragraph)
        p_words, p_sentences = len(paragraph.split()), _sentences(paragraph)
        p_pos = sum(t in POSITIVE for t in tokens)
        p_neg = sum(t in NEGATIVE for t in tokens)
        keywords.update(_content_words(paragraph))
        words, sentences = words + p_words, sentences + p_sentences
        positive, negative = positive + p_pos, negative + p_neg
        ctx.emit(f"¶{n}: {p_words} words, {p_sentences} sentences, +{p_pos}/-{p_neg}\n")
    return {
        "title": item["title"],
        "words": words,
        "sentences": sentences,
        "paragraphs": len(paragraphs),
        "keywords": _top(keywords, TOP_KEYWORDS_PER_SECTION),
        "positive": positive,
        "negative": negative,
        "sentiment": _sentiment(positive, negative),
    }


@wf.step
def summarise(extract: dict[str, Any], sections: list[dict[str, Any]], analyse: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals from the per-section analyses; overall keywords are recounted over the full text,
    because summing each section's top few would miss words spread evenly across sections."""
    overall: Counter[str] = Counter()
    for section in sections:
        overall.update(_content_words(section["text"]))
    positive = sum(a["positive"] for a in analyse)
    negative = sum(a["negative"] for a in analyse)
    by_sentiment = sorted(analyse, key=lambda a: a["sentiment"])
    return {
        "title": extract["title"],
        "source": Path(extract["source"]).name,
        "sections": [a["title"] for a in analyse],
        "totals": {
            "sections": len(analyse),
            "paragraphs": sum(a["paragraphs"] for a in analyse),
            "sentences": sum(a["sentences"] for a in analyse),
            "words": sum(a["words"] for a in analyse),
        },
        "sentiment": {
            "score": _sentiment(positive, negative),
            "positive": positive,
            "negative": negative,
            "most_positive": by_sentiment[-1]["title"] if analyse else None,
            "most_negative": by_sentiment[0]["title"] if analyse else None,
        },
        "top_keywords": _top(overall, TOP_KEYWORDS_OVERALL),
    }
