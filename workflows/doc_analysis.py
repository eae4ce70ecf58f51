"""Document analysis with a language model: read a text file, classify it (one validated JSON
document), pull out its key findings (NDJSON: each finding appears the moment its line is
complete), and write a summary for the audience the classification named.

    statepipe run doc_analysis --dry-run                       # simulated model, no key
    statepipe run doc_analysis -i path=notes/minutes.txt       # OPENAI_API_KEY set

`classify` and `findings` both need only the text, so they run side by side; `summarise` waits
for both, and `report` gathers everything into the run's result. The model is
STATEPIPE_MODEL (default gpt-4o-mini); point OPENAI_BASE_URL at any OpenAI-compatible server.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from statepipe import StepContext, Workflow

# Workflow files are loaded by path, not as a package: load the shared helper the same way.
_spec = importlib.util.spec_from_file_location("statepipe_examples_files", Path(__file__).with_name("_files.py"))
assert _spec is not None and _spec.loader is not None
files = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(files)

MODEL = os.environ.get("STATEPIPE_MODEL", "gpt-4o-mini")
# About 6,000 tokens of document per prompt: plenty for a report, cheap for a long file.
MAX_PROMPT_CHARS = 24_000

wf = Workflow(
    "doc_analysis",
    description="Classify a text document (structured output), stream its key findings as NDJSON, summarise",
)

SYSTEM = "You are a careful analyst. Base every statement on the document you are given; never invent facts."


class Classification(BaseModel):
    document_type: Literal[
        "report", "article", "memo", "minutes", "proposal", "manual", "specification", "correspondence", "other"
    ] = Field(description="What kind of document this is")
    audience: str = Field(description="Who the document is written for, in a few words")
    topics: list[str] = Field(min_length=1, max_length=8, description="The main subjects, most important first")
    confidence: float = Field(ge=0, le=1, description="How sure you are of document_type, from 0 to 1")


class Finding(BaseModel):
    finding: str = Field(description="One key point of the document, as a complete sentence")
    kind: Literal["result", "risk", "problem", "decision", "recommendation", "metric"]
    evidence: str = Field(description="A short quotation or figure from the document that supports it")
    importance: int = Field(ge=1, le=5, description="5 for what a reader must not miss")


def _document(extract: dict[str, Any]) -> str:
    note = "\n[... the document continues; only its beginning is shown ...]" if extract["truncated"] else ""
    return f"Document {extract['name']!r}:\n<<<\n{extract['text'][:MAX_PROMPT_CHARS]}{note}\n>>>"


@wf.step
def extract(ctx: StepContext, path: str = "examples/report.txt") -> dict[str, Any]:
    """Read the document; its first '# ' line, if any, is the title."""
    file = files.locate(path, what="document")
    text = file.read_text(encoding="utf-8").strip()
    if not text:
        raise ValueError(f"document {file} is empty")
    title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), file.stem)
    words = len(text.split())
    truncated = len(text) > MAX_PROMPT_CHARS
    shown = f"; the model sees its first {MAX_PROMPT_CHARS:,} characters" if truncated else ""
    ctx.progress(f"read {file.name}: {words:,} words{shown}")
    return {
        "source": str(file), "name": file.name, "title": title, "words": words, "text": text, "truncated": truncated
    }


@wf.llm_step(model=MODEL, shape="json", schema=Classification, system=SYSTEM)
def classify(extract: dict[str, Any]) -> str:
    """Say what kind of document it is, for whom, about what, and how sure that is."""
    return (
        "Classify this document: its type, its intended audience, its main topics, and your "
        f"confidence in the type.\n\n{_document(extract)}"
    )


@wf.llm_step(model=MODEL, shape="ndjson", schema=Finding, system=SYSTEM)
def findings(extract: dict[str, Any], max_findings: int = 8) -> str:
    """The key findings, one JSON object per line, each shown as soon as it is complete."""
    return (
        f"List the key findings of this document, at most {max_findings}, most important first: "
        "results achieved, risks, problems, decisions, recommendations and headline metrics. "
        f"Quote the supporting evidence briefly.\n\n{_document(extract)}"
    )


@wf.llm_step(model=MODEL, system=SYSTEM)
def summarise(
    extract: dict[str, Any], classify: dict[str, Any], findings: list[dict[str, Any]], summary_words: int = 150
) -> str:
    """A summary in prose for the document's audience, streamed as it is written."""
    points = "\n".join(f"- [{f['kind']}, importance {f['importance']}] {f['finding']}" for f in findings)
    return (
        f"Write a summary of about {summary_words} words of the {classify['document_type']} below for "
        f"this audience: {classify['audience']}. Lead with what matters most to them, keep the figures, "
        "and write plain prose without headings or lists.\n\n"
        f"Key findings already identified:\n{points}\n\n{_document(extract)}"
    )


@wf.step
def report(
    extract: dict[str, Any], classify: dict[str, Any], findings: list[dict[str, Any]], summarise: str
) -> dict[str, Any]:
    """Everything in one result: the classification, the findings by importance, the summary."""
    ranked = sorted(findings, key=lambda f: -f["importance"])  # stable: the model's order breaks ties
    by_kind: dict[str, int] = {}
    for f in ranked:
        by_kind[f["kind"]] = by_kind.get(f["kind"], 0) + 1
    return {
        "title": extract["title"],
        "source": extract["name"],
        "words": extract["words"],
        "classification": classify,
        "summary": summarise.strip(),
        "findings": ranked,
        "findings_by_kind": dict(sorted(by_kind.items())),
    }
