"""Pure logic of the monitor: tokens, grade withholding in the fan-out, slow clients, decoding."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from plantstream.access import Tier
from plantstream.config import ConfigError
from plantstream.contract import Aggregate, Grade, TagMeta
from plantstream.monitor.auth import (
    Authenticator,
    MonitorConfig,
    grade_visible,
    load_config,
    parse_tokens_env,
    token_of,
)
from plantstream.monitor.feed import decode
from plantstream.monitor.hub import END, Event, GradeBook, Hub
from plantstream.monitor.store import bucket_for
from plantstream.monitor.web import BadParam, parse_time
from plantstream.producers import codec
from plantstream.testing.monitor import EngineOf


def test_tokens_from_env_and_yaml(tmp_path: Path) -> None:
    assert parse_tokens_env("abcdefgh=owner, ijklmnop=public") == {"abcdefgh": Tier.OWNER, "ijklmnop": Tier.PUBLIC}
    with pytest.raises(ConfigError, match="entry 2 has tier 'root'"):
        parse_tokens_env("abcdefgh=owner,ijklmnop=root")
    with pytest.raises(ConfigError, match="at least 8"):
        parse_tokens_env("short=owner")
    cfg_file = tmp_path / "m.yaml"
    cfg_file.write_text("tokens:\n  yaml-token-1: member\nclient_queue: 5\n")
    with pytest.raises(ConfigError, match=r"m.yaml:3: key 'client_queue'"):
        load_config(cfg_file, env={})
    cfg_file.write_text("tokens:\n  yaml-token-1: member\n")
    cfg = load_config(cfg_file, env={"PLANTSTREAM_MONITOR_TOKENS": "env-token-1=owner"})
    assert cfg.tokens == {"yaml-token-1": Tier.MEMBER, "env-token-1": Tier.OWNER}


def test_authenticator_fails_closed() -> None:
    auth = Authenticator(MonitorConfig(tokens={"owner-tok-1": Tier.OWNER}))
    assert auth.tier("owner-tok-1") is Tier.OWNER
    assert auth.tier("owner-tok-2") is None and auth.tier("owner-tok-") is None
    assert auth.tier(None) is None  # tokens configured: anonymous refused by default
    assert Authenticator(MonitorConfig()).tier(None) is Tier.PUBLIC  # no tokens at all: least privilege
    assert token_of("Bearer abc", None) == "abc" and token_of(None, "q") == "q"
    assert token_of("Basic abc", "q") != "q"  # a malformed header never falls back to anything
    assert not grade_visible(Tier.PUBLIC, None) and not grade_visible(Tier.MEMBER, "bogus")
    assert grade_visible(Tier.OWNER, None) and grade_visible(Tier.MEMBER, "important")


def _event(*tags: str | None) -> Event:
    return Event("aggregates", "steel", [{"tag": t, "last": 1.0} for t in tags])


def test_hub_withholds_per_tier_and_serializes_once_per_tier() -> None:
    async def run() -> None:
        grades = GradeBook()
        grades.learn("steel", "core.tag", "core")
        grades.load_registry({("steel", "gen.tag"): "general", ("steel", "core.tag"): "general"})
        hub = Hub(grades)
        owner, public1, public2 = hub.subscribe(Tier.OWNER), hub.subscribe(Tier.PUBLIC), hub.subscribe(Tier.PUBLIC)
        ev = _event("core.tag", "gen.tag", "unknown.tag", None)
        assert hub.publish([ev, _event("core.tag")]) == 4  # owner gets both events, publics only the first
        got = json.loads(owner.queue.get_nowait().split(b"data: ")[1])
        assert [i["tag"] for i in got["items"]] == ["core.tag", "gen.tag", "unknown.tag", None]
        pub = public1.queue.get_nowait()
        assert [i["tag"] for i in json.loads(pub.split(b"data: ")[1])["items"]] == ["gen.tag", None]
        assert public2.queue.get_nowait() is pub  # the same bytes object: serialized once
        assert public1.queue.empty()  # the core-only event was not sent at all
        assert owner.queue.qsize() == 1

    asyncio.run(run())


def test_slow_client_drops_oldest_and_close_ends_streams() -> None:
    async def run() -> None:
        hub = Hub(GradeBook(), queue_size=10)
        slow, other = hub.subscribe(Tier.OWNER), hub.subscribe(Tier.OWNER, plants=["chemical"])
        hub.publish(_event(None) for _ in range(25))
        assert slow.queue.qsize() == 10 and slow.dropped == 15
        first = slow.queue.get_nowait()
        assert b"id: 16\n" in first  # the newest 10 remain
        assert other.queue.empty()
        hub.close()
        items = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
        assert items[-1] == END

    asyncio.run(run())


def test_decode_topics() -> None:
    grades = GradeBook()
    meta = TagMeta("steel", "t1", "a/b", "degC", grade=Grade.IMPORTANT)
    assert decode("tags", codec.encode_tag_meta(meta), grades) == [] and grades.grade("steel", "t1") == "important"
    a1 = Aggregate("steel", "a/b", "t1", "1s", 1, 1, 0, float("nan"), 2.0, 2.0, 2.0, 0.0, 2.0, "degC", None)
    a2 = Aggregate("steel", "a/b", "t1", "1m", 1, 1, 0, 1.0, 2.0, 2.0, 2.0, 0.0, 2.0, "degC", None)
    [ev] = decode("aggregates", codec.encode_aggregates([a1, a2]), grades)
    assert len(ev.items) == 1 and ev.items[0]["min"] is None  # NaN is not JSON; 1 min windows not forwarded
    # A raw map as an older producer sent it: empty tag read as none, ``state`` read as the status.
    raw = {"plant": "steel", "tag": "", "peak": 1, "start_us": 5, "state": "closed"}
    [dev] = decode("deviations", codec.encode_deviation_map(raw), grades)
    assert dev.items[0]["tag"] is None and dev.items[0]["status"] == "closed" and "state" not in dev.items[0]
    with pytest.raises(codec.CodecError, match="'plant' is required"):
        decode("deviations", codec.encode_deviation_map({"tag": "x", "start_us": 5}), grades)
    with pytest.raises(codec.CodecError):
        decode("aggregates", b"garbage", grades)


def test_time_parameters_and_buckets() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert parse_time("-15m", now, "start") == now - timedelta(minutes=15)
    assert parse_time("2026-01-01T10:00:00", now, "start") == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert parse_time("2026-01-01T10:00:00Z", now, "start").tzinfo is not None
    with pytest.raises(BadParam, match="'start'"):
        parse_time("yesterday", now, "start")
    assert bucket_for(timedelta(minutes=10), 600) == timedelta(seconds=1)
    assert bucket_for(timedelta(hours=24), 600) == timedelta(minutes=5)
    assert bucket_for(timedelta(days=400), 10) >= timedelta(days=1)


def test_token_names_for_pull_records(tmp_path: Path) -> None:
    from plantstream.monitor.auth import TokenSpec, token_label

    cfg_file = tmp_path / "m.yaml"
    cfg_file.write_text("tokens:\n  yaml-token-1: member\n  yaml-token-2: {tier: public, name: pat}\n")
    cfg = load_config(cfg_file, env={"PLANTSTREAM_MONITOR_TOKENS": "env-token-1=owner:olga"})
    assert cfg.tokens["yaml-token-1"] == Tier.MEMBER  # the short form still works
    assert cfg.tokens["yaml-token-2"] == TokenSpec(tier=Tier.PUBLIC, name="pat")
    auth = Authenticator(cfg)
    pat, olga, plain = auth.identify("yaml-token-2"), auth.identify("env-token-1"), auth.identify("yaml-token-1")
    assert pat is not None and (pat.tier, pat.name) == (Tier.PUBLIC, "pat")
    assert olga is not None and (olga.tier, olga.name) == (Tier.OWNER, "olga")
    assert plain is not None and plain.name == token_label("yaml-token-1") and "yaml-token-1" not in plain.name
    assert auth.identify("yaml-token-3") is None and auth.identify(None) is None
    anon = Authenticator(MonitorConfig()).identify(None)
    assert anon is not None and anon.anonymous and anon.tier is Tier.PUBLIC
    cfg_file.write_text("tokens:\n  yaml-token-1: {tier: member, name: 'no spaces'}\n")
    with pytest.raises(ConfigError, match=r"m.yaml:2: key 'tokens.yaml-token-1"):
        load_config(cfg_file, env={})
    with pytest.raises(ConfigError, match="entry 1 has name"):
        parse_tokens_env("abcdefgh=member:a b")


def test_pull_runner_cancels_on_close(tmp_path: Path) -> None:
    import threading
    from typing import Any

    from plantstream.config import Settings
    from plantstream.domain.pullrequest import Requester, validate_request
    from plantstream.monitor import pulls

    started = threading.Event()

    def waits_for_cancel(req: Any, who: Any, **kw: Any) -> Any:
        kw["on_begin"](7)
        started.set()
        assert kw["cancel"].wait(10)
        raise pulls.PullCancelled("cancelled")

    dead = Settings.from_env({"PLANTSTREAM_DB_DSN": "postgresql://nobody@127.0.0.1:1/none"})
    runner = pulls.PullRunner(dead, tmp_path, max_concurrent=1, engine=EngineOf(waits_for_cancel))
    req = validate_request({"plant": "p", "start": "2025-01-01T00:00:00Z", "end": "2025-01-01T00:01:00Z"})
    job = runner.start(req, Requester(name="mia", tier=Tier.MEMBER))
    assert started.wait(10) and runner.get(7) is job
    with pytest.raises(pulls.Busy):
        runner.start(req, Requester(name="mia", tier=Tier.MEMBER))
    runner.close(10)
    assert job.finished.is_set() and job.state == "failed" and runner.running == 0
    with pytest.raises(pulls.Busy):  # closed: nothing new starts
        runner.start(req, Requester(name="mia", tier=Tier.MEMBER))


def test_a_runner_without_a_pull_engine_refuses_instead_of_guessing(tmp_path: Path) -> None:
    from plantstream.config import Settings
    from plantstream.domain.pullrequest import Requester, validate_request
    from plantstream.monitor import pulls

    runner = pulls.PullRunner(Settings.from_env({}), tmp_path)
    req = validate_request({"plant": "p", "start": "2025-01-01T00:00:00Z", "end": "2025-01-01T00:01:00Z"})
    with pytest.raises(pulls.NoEngine, match="datasets stage"):
        runner.start(req, Requester(name="mia", tier=Tier.MEMBER))
    assert runner.running == 0


def test_the_console_entry_point_hands_the_datasets_engine_to_the_monitor() -> None:
    import click

    from plantstream import cli as entry
    from plantstream.datasets.api import ENGINE

    ctx = click.Context(entry.cli)
    callback = entry.cli.callback
    assert callback is not None
    with ctx:  # click's pass_context takes ctx from here
        callback(None, None)
    assert ctx.obj["pull_engine"]() is ENGINE
