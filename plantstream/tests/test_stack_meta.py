"""stack.json as a typed model (plantstream.paths.StackMeta): what `stack up` writes reads back
typed, a malformed file is an error naming the file and the key (never a value: it holds the
database password), and the settings' fallback ignores a malformed file with a warning."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from plantstream.paths import STACK_META, StackMetaError, local_stack_env, parse_stack_meta, read_stack_meta
from plantstream.stack import Stack, StackError

SECRET = "s3cr3t-pw-never-printed"


def test_what_the_stack_writes_reads_back_typed(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    password = stack.password()  # creates the file
    meta = stack._meta()
    meta["client_env"] = stack.env()
    stack._save_meta(meta)
    got = read_stack_meta(tmp_path / STACK_META)
    assert got["pg_password"] == password
    assert got["client_env"]["PLANTSTREAM_DB_DSN"].startswith("postgresql://plantstream:")
    assert local_stack_env(tmp_path) == stack.env()
    assert read_stack_meta(tmp_path / "missing.json") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "stack.json: Invalid JSON"),
        ("[1, 2]", "stack.json: Input should be an object"),
        (json.dumps({"pg_password": 5}), "stack.json: key 'pg_password': Input should be a valid string"),
        (json.dumps({"client_env": ["PLANTSTREAM_DB_DSN"]}), "key 'client_env': Input should be an object"),
        (
            json.dumps({"pg_password": SECRET, "client_env": {"PLANTSTREAM_PARTITIONS": 6}}),
            "key 'client_env.PLANTSTREAM_PARTITIONS': Input should be a valid string",
        ),
        (json.dumps({"pg_password": SECRET, "engine_note": None}), "key 'engine_note': Input should be a valid string"),
    ],
)
def test_malformed_file_names_the_file_and_key_never_a_value(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / STACK_META
    path.write_text(text)
    with pytest.raises(StackMetaError) as err:
        read_stack_meta(path)
    assert str(err.value).startswith(str(path))
    assert message in str(err.value)
    assert SECRET not in str(err.value)
    with pytest.raises(StackError, match="written by `plantstream stack up`") as stack_err:
        Stack(tmp_path).password()
    assert message in str(stack_err.value) and SECRET not in str(stack_err.value)


def test_unknown_keys_are_ignored() -> None:
    assert parse_stack_meta(json.dumps({"engine": "postgres", "from_a_newer_build": [1]})) == {"engine": "postgres"}


def test_settings_fallback_ignores_a_malformed_file_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / STACK_META).write_text(json.dumps({"pg_password": SECRET, "client_env": {"A": 1}}))
    with caplog.at_level(logging.WARNING, logger="plantstream.paths"):
        assert local_stack_env(tmp_path) == {}
    (record,) = [r for r in caplog.records if r.name == "plantstream.paths"]
    assert "key 'client_env.A'" in record.kv["error"]  # type: ignore[attr-defined]
    assert SECRET not in caplog.text
