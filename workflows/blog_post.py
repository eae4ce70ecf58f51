"""A blog post written by a language model in stages: research the topic, outline it, write every
section in parallel, then edit the draft into one article.

    statepipe run blog_post --dry-run                                        # simulated model, no key
    statepipe run blog_post -i topic="Retries without duplicate side effects"  # OPENAI_API_KEY set

`outline` is NDJSON, one section per line, so the sections appear one by one while the model is
still planning the rest; `write` is a fan-out with one streaming call per section; `edit` reads
the whole draft and writes the title, introduction and conclusion; `assemble` is plain Python and
its Markdown is the run's result. The model is STATEPIPE_MODEL (default gpt-4o-mini); point
OPENAI_BASE_URL at any OpenAI-compatible server.
"""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import BaseModel, Field

from statepipe import Workflow

MODEL = os.environ.get("STATEPIPE_MODEL", "gpt-4o-mini")
DEFAULT_TOPIC = "Why long-running AI pipelines need durable workflows"

wf = Workflow(
    "blog_post",
    description="Research a topic, outline it (NDJSON), write the sections in parallel, edit into one article",
)

SYSTEM = (
    "You are an experienced technical writer. You write clear, concrete prose for practitioners: "
    "short paragraphs, specific examples, no hype, no filler."
)


class Research(BaseModel):
    angle: str = Field(description="The post's argument in one sentence")
    audience: str = Field(description="Who the post is for, in a few words")
    key_points: list[str] = Field(min_length=3, max_length=10, description="Facts and ideas the post should get across")
    reader_questions: list[str] = Field(min_length=1, max_length=6, description="Questions a reader arrives with")
    pitfalls: list[str] = Field(max_length=6, description="Common misconceptions or mistakes worth addressing")


class Section(BaseModel):
    heading: str = Field(description="The section's heading, without '#'")
    purpose: str = Field(description="What the section does for the reader, in one sentence")
    points: list[str] = Field(min_length=1, max_length=6, description="What it covers, in order")


class Edit(BaseModel):
    title: str = Field(description="The article's title")
    standfirst: str = Field(description="One sentence under the title saying what the reader gets")
    introduction: str = Field(description="The opening paragraph or two, in Markdown")
    conclusion: str = Field(description="The closing paragraph, in Markdown")
    notes: list[str] = Field(max_length=8, description="Editor's notes: repetition, gaps or claims to check")


def _bullets(items: list[str]) -> str:
    return "\n".join(f"- {i}" for i in items)


def _brief(research: dict[str, Any]) -> str:
    return (
        f"Angle: {research['angle']}\nAudience: {research['audience']}\n"
        f"Key points:\n{_bullets(research['key_points'])}\n"
        f"Reader questions:\n{_bullets(research['reader_questions'])}\n"
        f"Pitfalls:\n{_bullets(research['pitfalls'])}"
    )


_HEADING_LINE = re.compile(r"^\s*#{1,6}\s+(.*?)\s*#*\s*$")


def _body(text: str, heading: str) -> str:
    """A section's text without a leading heading line repeating its own heading (writers often
    add one although told not to); the article sets the headings itself."""
    lines = text.strip().splitlines()
    if lines:
        m = _HEADING_LINE.match(lines[0])
        if m and m.group(1).strip().strip("*").lower() == heading.strip().lower():
            lines = lines[1:]
    return "\n".join(lines).strip()


@wf.llm_step(model=MODEL, shape="json", schema=Research, system=SYSTEM)
def research(topic: str = DEFAULT_TOPIC) -> str:
    """Gather the angle, audience, key points and reader questions (fields stream as they close)."""
    return (
        f"I am writing a blog post on: {topic}\n\n"
        "Before any outline, research it: settle the post's angle, its audience, the key points it must "
        "get across (concrete facts, mechanisms, numbers where you know them), the questions a reader "
        "arrives with, and the misconceptions worth correcting."
    )


@wf.llm_step(model=MODEL, shape="ndjson", schema=Section, system=SYSTEM)
def outline(research: dict[str, Any], topic: str = DEFAULT_TOPIC, sections: int = 5) -> str:
    """Plan the body sections, one JSON line each, shown one by one as they complete."""
    return (
        f"Outline the body of a blog post on: {topic}\n\nResearch brief:\n{_brief(research)}\n\n"
        f"Plan about {sections} body sections in reading order (no introduction or conclusion: "
        "those are written separately). Each section gets a heading, its purpose and the points it covers; "
        "together they must answer the reader questions without repeating each other."
    )


@wf.llm_step(model=MODEL, map_over=outline, system=SYSTEM)
def write(
    item: dict[str, Any],
    outline: list[dict[str, Any]],
    research: dict[str, Any],
    topic: str = DEFAULT_TOPIC,
    words: int = 1200,
) -> str:
    """Write one section, streaming its text; every section is written at the same time."""
    plan = "\n".join(f"{n}. {s['heading']}" + ("  <- this one" if s == item else "") for n, s in enumerate(outline, 1))
    budget = max(80, words // max(1, len(outline)))
    return (
        f"Write the section \"{item['heading']}\" of a blog post on: {topic}\n\n"
        f"Its purpose: {item['purpose']}\nCover, in order:\n{_bullets(item['points'])}\n\n"
        "The whole post, for context (colleagues write the other sections; do not cover their ground):\n"
        f"{plan}\n\n"
        f"Audience: {research['audience']}\nAngle: {research['angle']}\n\n"
        f"About {budget} words of Markdown. Do not repeat the section heading and add no sub-headings "
        "above third level; no introduction or conclusion to the post as a whole."
    )


@wf.llm_step(model=MODEL, shape="json", schema=Edit, system=SYSTEM)
def edit(outline: list[dict[str, Any]], write: list[str], research: dict[str, Any], topic: str = DEFAULT_TOPIC) -> str:
    """Read the whole draft; write the title, standfirst, introduction and conclusion, and notes."""
    draft = "\n\n".join(f"## {s['heading']}\n\n{_body(t, s['heading'])}" for s, t in zip(outline, write))
    return (
        f"You are editing a blog post on: {topic}\nAngle: {research['angle']}\nAudience: {research['audience']}\n\n"
        f"Its body sections, written by several writers:\n<<<\n{draft}\n>>>\n\n"
        "Write the title, a one-sentence standfirst, an introduction that sets up the sections in this order, "
        "and a conclusion that draws them together. Add editor's notes on repetition between sections, gaps, "
        "and claims that need checking."
    )


@wf.step
def assemble(edit: dict[str, Any], outline: list[dict[str, Any]], write: list[str]) -> str:
    """The finished article in Markdown: title, standfirst, introduction, sections, conclusion."""
    parts = [f"# {edit['title'].strip()}", f"*{edit['standfirst'].strip()}*", edit["introduction"].strip()]
    for section, text in zip(outline, write):
        parts.append(f"## {section['heading'].strip()}\n\n{_body(text, section['heading'])}")
    parts.append(f"## Conclusion\n\n{edit['conclusion'].strip()}")
    return "\n\n".join(p for p in parts if p.strip()) + "\n"
