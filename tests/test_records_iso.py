"""records.iso writes a timestamp as datetime.isoformat() does, character for character, though
orjson writes most of them (it rounds an offset to whole minutes, which isoformat writes to the
second): the JSON documents of `inspect --json`, `list --json` and the HTTP API must not change
with who formatted their timestamps."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statepipe.store.records import iso


class _Stamp(datetime):
    """A subclass of datetime, which orjson refuses to write."""


AMSTERDAM = ZoneInfo("Europe/Amsterdam")


@pytest.mark.parametrize("ts", [
    datetime(2024, 5, 1, 12, 3, 4, 123456, tzinfo=timezone.utc),  # microseconds
    datetime(2024, 5, 1, 12, 3, 4, tzinfo=timezone.utc),  # none: isoformat leaves them out
    datetime(2024, 5, 1, 12, 3, 4, 5, tzinfo=timezone.utc),  # a few, zero-padded
    datetime(2024, 5, 1, 12, 3, 4, 5, tzinfo=AMSTERDAM),  # +02:00
    datetime(2024, 1, 1, 0, 0, tzinfo=ZoneInfo("Asia/Kathmandu")),  # +05:45
    datetime(2024, 1, 1, 0, 0, tzinfo=ZoneInfo("America/St_Johns")),  # -03:30
    datetime(2024, 10, 27, 2, 30, tzinfo=AMSTERDAM, fold=0),  # the hour that happens twice
    datetime(2024, 10, 27, 2, 30, tzinfo=AMSTERDAM, fold=1),
    datetime(2024, 5, 1, 12, 3, 4, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    datetime(1900, 5, 1, 12, 3, 4, 5, tzinfo=AMSTERDAM),  # old: +00:19:32, local mean time
    datetime(1972, 1, 1, 12, 0, tzinfo=ZoneInfo("Africa/Monrovia")),  # -00:44:30, the last such offset
    datetime(1850, 1, 1, tzinfo=ZoneInfo("America/New_York")),  # -04:56:02
    datetime(2024, 5, 1, 12, 3, 4, tzinfo=timezone(timedelta(seconds=30))),  # a fixed offset with seconds
    datetime(2024, 5, 1, 12, 3, 4, tzinfo=timezone(timedelta(microseconds=30))),
    datetime(1, 1, 1, tzinfo=timezone.utc),  # years of fewer than four digits are zero-padded
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=14))),
    datetime(2024, 5, 1, 12, 3, 4, 123),  # naive: no offset
    _Stamp(2024, 5, 1, 12, 3, 4, 123456, tzinfo=timezone.utc),
], ids=repr)
def test_a_timestamp_is_written_as_isoformat_writes_it(ts):
    assert iso(ts) == ts.isoformat()


def test_no_timestamp_is_none():
    assert iso(None) is None


# every zone of the tz database the tests' machine has, at any instant of the years a store
# holds and of those before, when offsets to the second were common
ZONES = sorted(available_timezones())


@given(
    st.datetimes(min_value=datetime(1800, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.sampled_from(ZONES).map(ZoneInfo)),
)
def test_a_timestamp_in_any_zone_is_written_as_isoformat_writes_it(ts):
    assert iso(ts) == ts.isoformat()


@given(st.datetimes(timezones=st.just(timezone.utc)))
def test_a_utc_timestamp_of_any_year_is_written_as_isoformat_writes_it(ts):
    assert iso(ts) == ts.isoformat()
