"""Pull requests out of range are refused naming the field (found by the fuzzer: a start of
0001-01-01 in a timezone east of UTC raised OverflowError out of validation)."""

from __future__ import annotations

import pytest

from plantstream.domain.pullrequest import RequestError, validate_request

BASE = {"plant": "steel", "start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z", "interval": "1s"}


@pytest.mark.parametrize("field", ["start", "end"])
def test_a_time_before_year_one_in_utc_names_the_field(field: str) -> None:
    with pytest.raises(RequestError) as err:
        validate_request({**BASE, field: "0001-01-01T00:00:00+14:00"})
    assert err.value.field == field and "out of range in UTC" in err.value.message
