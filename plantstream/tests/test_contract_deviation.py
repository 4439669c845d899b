"""The contract's Deviation: one typed record for streams, sink and monitor, strict about what it reads."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plantstream.contract import (
    DEVIATION_KEYS,
    ContractError,
    Deviation,
    DeviationKind,
    DeviationStatus,
)

BASE: dict[str, Any] = {
    "kind": "process",
    "status": "open",
    "plant": "steel",
    "equipment": "caster-1",
    "start_us": 1_700_000_000_000_000,
    "lot": "H1",
    "tag": "mould_temp",
    "property": "T",
    "peak": 1650.0,
    "limit_max": 1640.0,
}


def test_a_map_round_trips_through_the_typed_record() -> None:
    dev = Deviation.from_map(BASE)
    assert dev.status is DeviationStatus.OPEN and dev.kind == DeviationKind.PROCESS
    assert dev.limit == 1640.0  # taken from limit_max since peak crossed it
    again = Deviation.from_map(dev.to_map())
    assert again == dev
    assert list(dev.to_map())[: len(DEVIATION_KEYS)] == list(DEVIATION_KEYS)


def test_the_derived_id_is_stable_and_names_the_event() -> None:
    a, b = Deviation.from_map(BASE), Deviation.from_map(dict(BASE))
    assert a.id == b.id and len(a.id) == 40
    later = Deviation.from_map({**BASE, "start_us": BASE["start_us"] + 1})
    assert later.id != a.id
    assert Deviation.from_map({**BASE, "id": "d-7"}).id == "d-7"


def test_state_of_an_older_producer_is_read_as_status() -> None:
    old = {k: v for k, v in BASE.items() if k != "status"} | {"state": "closed", "end_us": BASE["start_us"] + 5}
    dev = Deviation.from_map(old)
    assert dev.status is DeviationStatus.CLOSED and "state" not in dev.to_map()


def test_details_keep_what_the_core_does_not_name() -> None:
    dev = Deviation.from_map({**BASE, "duration_s": 4.5, "condition": {"temper": "T6", "n": [1, 2]}})
    assert dev.details == {"duration_s": 4.5, "condition": {"temper": "T6", "n": [1, 2]}}
    closed = dev.replace(status=DeviationStatus.CLOSED, end_us=dev.start_us + 10)
    assert closed.to_map()["status"] == "closed" and closed.to_map()["duration_s"] == 4.5


def test_an_unknown_kind_is_carried_for_newer_producers() -> None:
    assert Deviation.from_map({**BASE, "kind": "drift"}).to_map()["kind"] == "drift"


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"plant": None}, "'plant' is required"),
        ({"start_us": None}, "'start_us'"),
        ({"start_us": 1.5}, "'start_us'"),
        ({"start_us": 2**63}, "'start_us'"),
        ({"status": "paused"}, "'status' must be open or closed"),
        ({"peak": "high"}, "'peak' must be a number"),
        ({"peak": True}, "'peak' must be a number"),
        ({"limit_min": float("nan")}, "'limit_min' must be finite"),
        ({"limit_max": float("inf")}, "'limit_max' must be finite"),
        ({"lot": "x" * 5000}, "'lot' is 5000 characters"),
        ({"tag": 7}, "'tag' must be a string"),
        ({"blob": b"\x00\x01"}, "blob"),
        ({"score": float("nan")}, "score"),
    ],
)
def test_a_bad_field_is_refused_by_name(change: dict[str, Any], names: str) -> None:
    with pytest.raises(ContractError, match=names.replace("(", r"\(")):
        Deviation.from_map({**BASE, **change})


def test_a_non_string_key_is_refused() -> None:
    with pytest.raises(ContractError, match="must be a string"):
        Deviation.from_map({**BASE, 5: "x"})


def test_details_nested_too_deep_are_refused() -> None:
    deep: Any = 1
    for _ in range(20):
        deep = [deep]
    with pytest.raises(ContractError, match="deep"):
        Deviation.from_map({**BASE, "nest": deep})


hostile = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=4),
)


@given(st.dictionaries(st.sampled_from([*BASE, "end_us", "limit", "state", "id", "spec", "x"]), hostile, max_size=8))
def test_any_hostile_map_is_read_or_refused_with_a_contract_error(overrides: dict[str, Any]) -> None:
    try:
        dev = Deviation.from_map({**BASE, **overrides})
    except ContractError:
        return
    assert Deviation.from_map(dev.to_map()) == dev
