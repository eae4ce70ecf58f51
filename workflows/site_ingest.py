"""Site ingestion: parse a folder of HTML pages, enrich every page with a language model (one call
per page, all under the model's rate limiter), and build a search index from the results.

    statepipe run site_ingest --dry-run                      # simulated model, no key
    statepipe run site_ingest -i site=path/to/exported/site  # OPENAI_API_KEY set

`pages` parses the site with the standard library's HTML parser (title, description, headings,
text without the navigation, and links between pages), counting as it goes; `enrich` fans out
over the pages, one structured-output call each (summary, keywords, category); `index` maps
keywords and categories to pages and reports orphan pages and broken links. The model is
STATEPIPE_MODEL (default gpt-4o-mini); point OPENAI_BASE_URL at any OpenAI-compatible server.
"""

from __future__ import annotations

import importlib.util
import os
import posixpath
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field

from statepipe import StepContext, Workflow, llm

# Workflow files are loaded by path, not as a package: load the shared helper the same way.
_spec = importlib.util.spec_from_file_location("statepipe_examples_files", Path(__file__).with_name("_files.py"))
assert _spec is not None and _spec.loader is not None
files = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(files)

MODEL = os.environ.get("STATEPIPE_MODEL", "gpt-4o-mini")
DEFAULT_SITE = "examples/site"
MAX_PROMPT_CHARS = 4_000  # of a page's text: enough to characterise it, cheap across dozens of pages
SHARED_KEYWORDS_SHOWN = 20

# A few dozen calls at once: keep this model to 8 in flight (per process, shared with every step
# that calls it), unless its concurrency was already configured (statepipe.llm.configure) before
# this file was loaded. The limiter, not the fan-out, holds back the calls beyond that.
ENRICH_CONCURRENCY = 8
if llm.model_config(MODEL).max_concurrency == llm.ModelConfig(MODEL).max_concurrency:
    llm.configure(MODEL, max_concurrency=ENRICH_CONCURRENCY)

wf = Workflow(
    "site_ingest",
    description="Parse a folder of HTML pages, enrich each page with an LLM (summary, keywords, category), index",
)

Category = Literal[
    "home", "product", "pricing", "documentation", "api reference",
    "blog", "customer story", "company", "support", "legal",
]


class Enrichment(BaseModel):
    summary: str = Field(description="Two sentences: what the page tells a visitor")
    keywords: list[str] = Field(
        min_length=3, max_length=8, description="Search keywords, lowercase, most specific first"
    )
    category: Category


# -- parsing ----------------------------------------------------------------------------------

_BLOCKS = frozenset(
    "address article aside blockquote br dd div dl dt figcaption figure h1 h2 h3 h4 h5 h6 hr li main ol p pre "
    "section table tr ul".split()
)
_SKIPPED = frozenset({"script", "style", "template", "noscript", "svg"})
_CHROME = frozenset({"nav", "header", "footer"})  # site navigation: its links count, its text does not
_VOID = frozenset("area base br col embed hr img input link meta source track wbr".split())


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.description = ""
        self.headings: list[dict[str, Any]] = []
        self.hrefs: list[str] = []
        self._text: list[str] = []
        self._open: list[str] = []
        self._heading: list[str] | None = None
        self._in_title = False
        self._cells = 0  # cells so far in the current table row

    def _hidden(self) -> bool:
        if any(t in _SKIPPED for t in self._open):
            return True
        # a <header> inside <main> or <article> is content; the page's own header is chrome
        for i, tag in enumerate(self._open):
            if tag in _CHROME and not (tag == "header" and {"main", "article"} & set(self._open[:i])):
                return True
        return False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "title":
            self._in_title = True
        elif tag == "meta" and values.get("name", "").lower() == "description":
            self.description = " ".join(values.get("content", "").split())
        elif tag == "a" and values.get("href"):
            self.hrefs.append(values["href"])
        if tag in _BLOCKS:
            self._text.append("\n")
        elif tag in ("td", "th"):  # a table row reads as one line, its cells separated
            self._text.append(" | " if self._cells else "")
            self._cells += 1
        if tag == "tr":
            self._cells = 0
        if tag in {"h1", "h2", "h3"} and not self._hidden():
            self._heading = []
        if tag not in _VOID:
            self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in {"h1", "h2", "h3"} and self._heading is not None:
            text = " ".join("".join(self._heading).split())
            if text:
                self.headings.append({"level": int(tag[1]), "text": text})
            self._heading = None
        if tag in self._open:  # close up to the matching tag: forgives unclosed <p> and <li>
            while self._open and self._open.pop() != tag:
                pass
        if tag in _BLOCKS:
            self._text.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._hidden():
            # line breaks in the source are spaces, except in <pre>; blocks make the lines
            self._text.append(data if "pre" in self._open else data.replace("\n", " "))
            if self._heading is not None:
                self._heading.append(data)

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self._text).split("\n"))
        return "\n".join(line for line in lines if line)


def _target(page: str, href: str) -> str | None:
    """The site-relative path a link points to, or None for external links, mail and
    same-page anchors. Folder links mean their index.html."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or not parts.path:
        return None
    path = unquote(parts.path)
    joined = path.lstrip("/") if path.startswith("/") else posixpath.join(posixpath.dirname(page), path)
    if not joined or joined.endswith("/"):
        joined += "index.html"
    return posixpath.normpath(joined)


def _parse(root: Path, file: Path) -> dict[str, Any]:
    path = file.relative_to(root).as_posix()
    parser = _PageParser()
    parser.feed(file.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    text = parser.text()
    links: list[str] = []
    external = 0
    for href in parser.hrefs:
        target = _target(path, href)
        if target is None:
            external += href.split(":", 1)[0].lower() in ("http", "https", "mailto")
        elif target != path and target not in links and target.endswith((".html", ".htm")):
            links.append(target)
    title = " ".join(parser.title.split()) or (parser.headings[0]["text"] if parser.headings else path)
    return {
        "path": path,
        "title": title,
        "description": parser.description,
        "headings": parser.headings,
        "words": len(text.split()),
        "text": text[:MAX_PROMPT_CHARS],
        "links": sorted(links),
        "external_links": external,
    }


# -- steps ------------------------------------------------------------------------------------


@wf.step
def pages(ctx: StepContext, site: str = DEFAULT_SITE, max_pages: int = 200) -> list[dict[str, Any]]:
    """Parse every .html page under the site folder (in path order), counting as it goes."""
    root = files.locate(site, what="site folder", directory=True)
    found = sorted(
        (f for f in root.rglob("*") if f.suffix.lower() in (".html", ".htm") and f.is_file()),
        key=lambda f: f.relative_to(root).as_posix(),
    )
    if not found:
        raise FileNotFoundError(f"no .html pages under {root}")
    if len(found) > max_pages:
        ctx.progress(f"{len(found)} pages found; processing the first {max_pages} (raise max_pages for more)")
        found = found[:max_pages]
    parsed = []
    for n, file in enumerate(found, 1):
        page = _parse(root, file)
        parsed.append(page)
        ctx.emit(f"{page['path']}: {page['title']!r}, {page['words']} words, {len(page['links'])} links\n")
        ctx.progress(f"parsed {n}/{len(found)} pages")
    return parsed


@wf.llm_step(
    model=MODEL,
    shape="json",
    schema=Enrichment,
    map_over=pages,
    item_key=lambda page: page["path"],
    system="You catalogue web pages for a site search index. Describe only what the page says.",
)
def enrich(item: dict[str, Any]) -> str:
    """One model call per page: a summary, search keywords and a category."""
    outline = "\n".join(f"{'  ' * (h['level'] - 1)}- {h['text']}" for h in item["headings"])
    return (
        f"Page {item['path']} of a website.\nTitle: {item['title']}\nDescription: {item['description'] or '(none)'}\n"
        f"Headings:\n{outline or '(none)'}\n\nText:\n<<<\n{item['text']}\n>>>\n\n"
        "Summarise what this page tells a visitor, list the keywords someone would search to find it, "
        "and choose its category."
    )


def _normal(keyword: str) -> str:
    return " ".join(keyword.lower().split()).strip(" .,;:")


@wf.step
def index(
    ctx: StepContext, pages: list[dict[str, Any]], enrich: list[dict[str, Any]], site: str = DEFAULT_SITE
) -> dict[str, Any]:
    """Keyword -> pages and category -> pages, a card per page, orphan pages and broken links."""
    known = {p["path"] for p in pages}
    inbound: Counter[str] = Counter()
    broken = []
    for page in pages:
        for link in page["links"]:
            if link in known:
                inbound[link] += 1
            else:
                broken.append({"page": page["path"], "link": link})
    by_keyword: dict[str, set[str]] = {}
    by_category: dict[str, list[str]] = {}
    cards = {}
    for page, info in zip(pages, enrich):
        keywords = list(dict.fromkeys(k for k in map(_normal, info["keywords"]) if k))
        for keyword in keywords:
            by_keyword.setdefault(keyword, set()).add(page["path"])
        by_category.setdefault(info["category"], []).append(page["path"])
        cards[page["path"]] = {
            "title": page["title"],
            "category": info["category"],
            "summary": info["summary"],
            "keywords": keywords,
            "words": page["words"],
            "links_out": len(page["links"]),
            "links_in": inbound[page["path"]],
        }
    # pages nothing links to, apart from the site's front page
    orphans = [p["path"] for p in pages if not inbound[p["path"]] and p["path"] not in ("index.html", "index.htm")]
    shared = sorted(((k, v) for k, v in by_keyword.items() if len(v) > 1), key=lambda kv: (-len(kv[1]), kv[0]))
    ctx.progress(
        f"{len(by_keyword)} keywords, {len(by_category)} categories over {len(pages)} pages; "
        f"{len(orphans)} orphan page(s), {len(broken)} broken link(s)"
    )
    return {
        "site": site,
        "totals": {
            "pages": len(pages),
            "words": sum(p["words"] for p in pages),
            "internal_links": sum(len(p["links"]) for p in pages),
            "external_links": sum(p["external_links"] for p in pages),
            "keywords": len(by_keyword),
            "categories": len(by_category),
        },
        "categories": {c: by_category[c] for c in sorted(by_category)},
        "keywords": {k: sorted(by_keyword[k]) for k in sorted(by_keyword)},
        "shared_keywords": [{"keyword": k, "pages": len(v)} for k, v in shared[:SHARED_KEYWORDS_SHOWN]],
        "pages": cards,
        "orphans": orphans,
        "broken_links": broken,
    }
