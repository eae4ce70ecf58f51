"""Parsing structured output while the model is still writing it.

An LLM step that asks for NDJSON shows each object the moment its line ends; one that asks for a
single JSON document shows each array element, and each top-level field, the moment it closes.
Models cut their output into chunks at arbitrary points (mid-token, mid-escape, mid-line), so the
property-based tests at the end check that where the text is cut never changes what is emitted.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statepipe.llm.parsing import Completed, JSONStreamParser, NDJSONParser, ParsedLine


def ndjson_when_emitted(text: str) -> list[tuple[str, ParsedLine]]:
    """Feeds `text` one character at a time; pairs each emitted line with the text fed so far."""
    parser = NDJSONParser()
    seen = []
    for end in range(1, len(text) + 1):
        seen += [(text[:end], parsed) for parsed in parser.feed(text[end - 1])]
    return seen + [(text, parsed) for parsed in parser.close()]


def ndjson(*chunks: str) -> list[ParsedLine]:
    parser = NDJSONParser()
    out = [parsed for chunk in chunks for parsed in parser.feed(chunk)]
    return out + parser.close()


def json_when_emitted(text: str) -> list[tuple[str, Completed]]:
    """Feeds `text` one character at a time; pairs each completed part with the text fed so far."""
    parser = JSONStreamParser()
    seen = []
    for end in range(1, len(text) + 1):
        seen += [(text[:end], completed) for completed in parser.feed(text[end - 1])]
    return seen


def json_stream(*chunks: str) -> tuple[list[Completed], Any]:
    parser = JSONStreamParser()
    completed = [part for chunk in chunks for part in parser.feed(chunk)]
    return completed, parser.close()


# -- NDJSON: one object per line ------------------------------------------------------------------


def test_each_object_is_emitted_the_moment_its_line_ends():
    text = '{"id": 1}\n{"id": 2}\n{"id": 3}'

    assert ndjson_when_emitted(text) == [
        ('{"id": 1}\n', ParsedLine({"id": 1}, '{"id": 1}', 1)),
        ('{"id": 1}\n{"id": 2}\n', ParsedLine({"id": 2}, '{"id": 2}', 2)),
        (text, ParsedLine({"id": 3}, '{"id": 3}', 3)),  # the last line needs no newline: close() reads it
    ]


def test_blank_lines_code_fences_and_surrounding_whitespace_are_ignored():
    text = '```json\n\n   {"id": 1}  \r\n\n```\n'

    assert ndjson(text) == [ParsedLine({"id": 1}, '{"id": 1}', 3)]


def test_an_object_broken_over_two_lines_is_repaired():
    parsed = ndjson('{"title": "Intro",\n', '"words": 300}\n')

    assert parsed == [ParsedLine({"title": "Intro", "words": 300}, '{"title": "Intro",\n"words": 300}', 1)]


def test_a_line_break_inside_a_string_is_kept_as_a_newline():
    assert [p.value for p in ndjson('{"text": "first\n', 'second"}\n')] == [{"text": "first\nsecond"}]


def test_a_pretty_printed_object_is_repaired_whole_not_split_at_its_inner_objects():
    obj = {"section": "Intro", "points": [{"p": 1}, {"p": 2}], "meta": {"draft": True}}

    assert [p.value for p in ndjson(json.dumps(obj, indent=2) + "\n")] == [obj]


def test_an_unfinished_object_is_reported_when_the_next_line_starts_a_new_one():
    parsed = ndjson('{"id": 1, "title": "cut sho\n', '{"id": 2}\n', '{"id": 3}\n')

    assert parsed[0] == ParsedLine(
        None, '{"id": 1, "title": "cut sho', 1, "unfinished JSON object: line 2 does not continue it"
    )
    assert [p.value for p in parsed[1:]] == [{"id": 2}, {"id": 3}]


def test_a_line_that_cannot_start_any_json_is_reported_at_once():
    when = ndjson_when_emitted('Here are the sections:\n{"id": 1}\n')

    assert when[0][0] == "Here are the sections:\n"
    assert when[0][1].value is None and when[0][1].error.startswith("invalid JSON")
    assert when[1][1].value == {"id": 1}


def test_valid_json_that_is_not_an_object_is_reported():
    parsed = ndjson('[1, 2]\n"just a string"\n42\nnull\n{"ok": true}\n')

    assert [p.error for p in parsed] == [
        "expected a JSON object, got an array",
        "expected a JSON object, got a string",
        "expected a JSON object, got a number",
        "expected a JSON object, got null",
        None,
    ]
    assert [p.line_number for p in parsed] == [1, 2, 3, 4, 5]


def test_an_object_still_unfinished_when_the_output_ends_is_reported():
    parsed = ndjson('{"id": 1}\n{"id": 2, "title":\n')

    assert parsed[1] == ParsedLine(
        None, '{"id": 2, "title":', 2, "unfinished JSON object: the output ended before it was complete"
    )


def test_an_object_that_never_completes_is_given_up_on_after_a_bound():
    parser = NDJSONParser(max_pending_lines=3)
    parsed = parser.feed('{"items": [\n1,\n2,\n3,\n4,\n') + parser.feed('{"id": 9}\n')

    assert parsed[0].value is None and "after 4 lines" in parsed[0].error
    assert parsed[0].text == '{"items": [\n1,\n2,\n3,'
    assert [p.value for p in parsed[1:]] == [None, {"id": 9}]  # "4," on its own is not JSON


# -- one JSON document, streamed ------------------------------------------------------------------


def test_array_elements_are_emitted_before_the_closing_bracket():
    text = '[{"id": 1}, {"id": 2}, "three", 4]'

    assert json_when_emitted(text) == [
        ('[{"id": 1}', Completed((0,), {"id": 1})),
        ('[{"id": 1}, {"id": 2}', Completed((1,), {"id": 2})),
        ('[{"id": 1}, {"id": 2}, "three"', Completed((2,), "three")),
        (text, Completed((3,), 4)),  # a number may go on ("4" -> "42") until a delimiter ends it
    ]


def test_top_level_fields_are_emitted_as_they_close():
    text = '{"title": "Intro", "words": 300, "meta": {"draft": true}, "tags": null}'

    assert json_when_emitted(text) == [
        ('{"title": "Intro"', Completed(("title",), "Intro")),
        ('{"title": "Intro", "words": 300,', Completed(("words",), 300)),
        ('{"title": "Intro", "words": 300, "meta": {"draft": true}', Completed(("meta",), {"draft": True})),
        (text, Completed(("tags",), None)),
    ]


def test_a_field_holding_an_array_emits_each_element_then_the_field():
    text = '{"sections": [{"h": "A"}, {"h": "B"}], "done": true}'

    assert json_when_emitted(text) == [
        ('{"sections": [{"h": "A"}', Completed(("sections", 0), {"h": "A"})),
        ('{"sections": [{"h": "A"}, {"h": "B"}', Completed(("sections", 1), {"h": "B"})),
        ('{"sections": [{"h": "A"}, {"h": "B"}]', Completed(("sections",), [{"h": "A"}, {"h": "B"}])),
        (text, Completed(("done",), True)),
    ]


def test_arrays_nested_deeper_are_emitted_whole():
    completed, _ = json_stream('[[1, [2]], {"a": [3]}]')

    assert completed == [Completed((0,), [1, [2]]), Completed((1,), {"a": [3]})]


@pytest.mark.parametrize(
    "value",
    [
        "closing ] and } and ,",
        "an escaped \" quote, then ]",
        "a backslash at the end \\",
        '\\" looks like an escaped quote but is a backslash and a quote',
        "unicode: é € 😀 and a control \x01 character",
        "{\"not\": [\"a\", \"document\"]}",
    ],
)
def test_strings_containing_brackets_quotes_and_escapes_do_not_confuse_it(value: str):
    text = json.dumps({"s": value, "list": [value, {"k": value}]})  # ensure_ascii: \uXXXX escapes

    completed, document = json_stream(*text)  # one character per chunk

    assert completed[-1] == Completed(("list",), [value, {"k": value}])
    assert document == {"s": value, "list": [value, {"k": value}]}


def test_unicode_escapes_and_surrogate_pairs_split_across_chunks_are_decoded():
    completed, document = json_stream('["caf\\u00e', '9", "\\ud83d', '\\ude00", "\\', '"q"]')

    assert document == ["café", "😀", '"q']
    assert [c.value for c in completed] == document


def test_prose_and_a_code_fence_before_the_document_are_skipped_and_text_after_it_ignored():
    completed, document = json_stream("Sure! Here it is:\n```json\n", '[1, 2]\n```\nHope this helps.')

    assert document == [1, 2]
    assert completed == [Completed((0,), 1), Completed((1,), 2)]


def test_close_returns_the_whole_document():
    text = '{"title": "T", "sections": [{"h": "A", "body": ["x", "y"]}], "n": -1.5e3, "empty": []}'

    assert json_stream(text)[1] == json.loads(text)


def test_empty_containers_emit_nothing_but_still_close():
    assert json_stream("[]") == ([], [])
    assert json_stream(" { } ") == ([], {})
    assert json_stream('{"a": []}') == ([Completed(("a",), [])], {"a": []})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"id": 1}, {"id": 2', "incomplete JSON document: the output ended after 20 characters, inside $[1]"),
        ('{"sections": [{"h": "A"}', "inside $.sections"),
        ('{"title": "unterminated', "inside $.title"),
        ("Sorry, I cannot help with that.", "no JSON document found"),
    ],
)
def test_close_on_truncated_output_raises_a_clear_error(text: str, message: str):
    parser = JSONStreamParser()
    parser.feed(text)

    with pytest.raises(ValueError) as raised:
        parser.close()
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1 "b": 2}', "invalid JSON at character 8: expected ',' or '}' after $.a, found '\"'"),
        ('{"a" 1}', "expected ':' after key 'a', found '1'"),
        ("{a: 1}", "expected a double-quoted key in $, found 'a'"),
        ("[1, , 2]", "expected a value for $[1], found ','"),
        ('{"a": [1, tru]}', "invalid JSON at character 10: Expecting value, in $.a[1]"),
        ('[{"a": 1,}]', "Expecting property name enclosed in double quotes, in $[0]"),
    ],
)
def test_invalid_output_stops_emission_and_close_names_the_problem(text: str, message: str):
    parser = JSONStreamParser()
    parser.feed(text)

    assert message in parser.error  # known as soon as it happens: the caller may stop the stream
    assert parser.feed("[1]") == []
    with pytest.raises(ValueError) as raised:
        parser.close()
    assert message in str(raised.value)


# -- where the chunks are cut never matters -------------------------------------------------------

# Pieces that matter to a scanner: brackets, quotes, backslashes, things that look like escapes.
TRICKY_TEXT = st.lists(
    st.sampled_from(list('ab {}[],:"\\/\n\t\x00é€😀\u2028') + ["\\u", "\\n", "ud83d"]), max_size=12
).map("".join) | st.text(max_size=6)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TRICKY_TEXT
)


def json_values(max_leaves: int, max_size: int) -> st.SearchStrategy[Any]:
    def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.lists(children, max_size=max_size) | st.dictionaries(TRICKY_TEXT, children, max_size=max_size)

    return st.recursive(SCALARS, containers, max_leaves=max_leaves)


OBJECTS = st.dictionaries(TRICKY_TEXT, json_values(max_leaves=10, max_size=4), max_size=5)
DOCUMENTS = st.lists(OBJECTS, max_size=4) | OBJECTS | st.lists(json_values(max_leaves=10, max_size=4), max_size=5)
STYLES = st.sampled_from(
    [
        {},
        {"indent": 2},
        {"separators": (",", ":")},
        {"ensure_ascii": False},
        {"indent": "\t", "ensure_ascii": False},
    ]
)


def expected_parts(document: list[Any] | dict[str, Any]) -> list[Completed]:
    """What the stream parser should emit for `document`, derived from the value alone."""
    if isinstance(document, list):
        return [Completed((i,), item) for i, item in enumerate(document)]
    parts = []
    for key, value in document.items():
        if isinstance(value, list):
            parts += [Completed((key, i), item) for i, item in enumerate(value)]
        parts.append(Completed((key,), value))
    return parts


def cut(text: str, points: list[int]) -> list[str]:
    """`text` as the chunks a stream might deliver, cut at each of `points`."""
    bounds = [0, *sorted(points), len(text)]
    return [text[start:end] for start, end in zip(bounds, bounds[1:])]


@settings(max_examples=60, deadline=None)
@given(document=DOCUMENTS, style=STYLES, fenced=st.booleans())
def test_json_stream_gives_the_same_parts_wherever_the_text_is_cut(document, style, fenced):
    text = json.dumps(document, **style)
    if fenced:
        text = f"```json\n{text}\n```"
    whole = json_stream(text)

    assert whole == (expected_parts(document), document)
    for point in range(len(text) + 1):
        assert json_stream(text[:point], text[point:]) == whole


@settings(max_examples=60, deadline=None)
@given(document=DOCUMENTS, style=STYLES, data=st.data())
def test_json_stream_gives_the_same_parts_for_any_number_of_cuts(document, style, data):
    text = json.dumps(document, **style)
    points = data.draw(st.lists(st.integers(0, len(text)), max_size=30))

    assert json_stream(*cut(text, points)) == (expected_parts(document), document)


@settings(max_examples=60, deadline=None)
@given(document=DOCUMENTS, style=STYLES, data=st.data())
def test_a_truncated_document_emits_a_prefix_of_the_parts_and_close_raises(document, style, data):
    text = json.dumps(document, **style)
    truncated = text[: data.draw(st.integers(0, len(text) - 1))]
    points = data.draw(st.lists(st.integers(0, len(truncated)), max_size=10))
    parser = JSONStreamParser()

    completed = [part for chunk in cut(truncated, points) for part in parser.feed(chunk)]

    assert completed == expected_parts(document)[: len(completed)]
    with pytest.raises(ValueError, match="incomplete JSON document|no JSON document found"):
        parser.close()


NDJSON_OBJECTS = st.dictionaries(TRICKY_TEXT, json_values(max_leaves=5, max_size=3), max_size=4)
NDJSON_STYLES = st.sampled_from([{}, {"indent": 2}, {"ensure_ascii": False}])
NDJSON_LINES = st.lists(st.tuples(NDJSON_OBJECTS, NDJSON_STYLES, st.sampled_from(["", "\n", "```\n"])), max_size=5)


def ndjson_text(lines: list[tuple[dict[str, Any], dict[str, Any], str]], final_newline: bool) -> str:
    """Objects one per line (or pretty-printed over several, as models sometimes do), with blank
    lines and code fences between them."""
    text = "".join(f"{json.dumps(obj, **style)}\n{extra}" for obj, style, extra in lines)
    return text if final_newline else text.rstrip("\n")


@settings(max_examples=60, deadline=None)
@given(lines=NDJSON_LINES, final_newline=st.booleans())
def test_ndjson_gives_the_same_objects_wherever_the_text_is_cut(lines, final_newline):
    text = ndjson_text(lines, final_newline)
    whole = ndjson(text)

    assert [parsed.value for parsed in whole] == [obj for obj, _, _ in lines]
    for point in range(len(text) + 1):
        assert ndjson(text[:point], text[point:]) == whole


@settings(max_examples=60, deadline=None)
@given(lines=NDJSON_LINES, final_newline=st.booleans(), data=st.data())
def test_ndjson_gives_the_same_objects_for_any_number_of_cuts(lines, final_newline, data):
    text = ndjson_text(lines, final_newline)
    points = data.draw(st.lists(st.integers(0, len(text)), max_size=30))

    assert [parsed.value for parsed in ndjson(*cut(text, points))] == [obj for obj, _, _ in lines]


def outcome(*chunks: str) -> tuple[list[Completed], Any]:
    """What a caller sees from the stream parser: the parts, then the document or the error."""
    parser = JSONStreamParser()
    completed = [part for chunk in chunks for part in parser.feed(chunk)]
    try:
        return completed, parser.close()
    except ValueError as exc:
        return completed, str(exc)


GARBAGE = st.lists(st.sampled_from(list('{}[]":,\\ \n1atrue`') + ['{"a": ', "```json\n"]), max_size=40).map("".join)


@settings(max_examples=100, deadline=None)
@given(text=GARBAGE, data=st.data())
def test_even_garbage_is_parsed_the_same_wherever_it_is_cut(text, data):
    points = data.draw(st.lists(st.integers(0, len(text)), max_size=10))

    assert ndjson(*cut(text, points)) == ndjson(text)
    assert outcome(*cut(text, points)) == outcome(text)
