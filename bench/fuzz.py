"""``plantstream bench --fuzz``: hostile inputs into every decoder that faces the outside, counting
crashes. A crash is any exception other than the decoder's own documented rejection (which names
the field); each decoder must reject or accept every input and never raise anything else.

Targets: MQTT JSON mapping (edge), Sparkplug B protobuf (edge), the wire codec (every message
kind), edge config YAML, the monitor's time parameters, and dataset pull requests. Inputs are
generated from a fixed seed: hostile scalars (lone surrogates, NaN and infinities, integers past
64 bits, timestamps before 1970 and beyond year 9999, huge strings), deep nesting, and mutations
(bit flips, truncation, splicing, insertion) of valid seeds. Same seed, same inputs.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from plantstream.config import ConfigError
from plantstream.contract import Aggregate, ContextEvent, ContextKind, Origin, Quality, Reading, TagMeta
from plantstream.domain.pullrequest import RequestError, validate_request
from plantstream.edge.config import EdgeConfig, MqttSource, SparkplugSource
from plantstream.edge.mqtt.decode import Malformed as MqttMalformed
from plantstream.edge.mqtt.decode import MqttDecoder
from plantstream.edge.sparkplug import sparkplug_b_pb2 as pb
from plantstream.edge.sparkplug.decode import DOUBLE, INT64, STRING, UINT64, SparkplugDecoder
from plantstream.edge.sparkplug.decode import Malformed as SpbMalformed
from plantstream.monitor.web import BadParam, parse_time
from plantstream.producers import codec
from plantstream.producers.codec import CodecError

EXAMPLES = Path(__file__).resolve().parent.parent / "edge"

HOSTILE_STRINGS = [
    "\ud800",
    "a\udfffb",
    "\x00",
    "",
    " ",
    "../../etc/passwd",
    "'; DROP TABLE readings; --",
    "\u202e\u0301",
    "9" * 400,
    "-1000000d",
    "-1e309s",
    "NaN",
    "Infinity",
    "10000-01-01T00:00:00Z",
    "0001-01-01T00:00:00+14:00",
    "1969-12-31T23:59:59Z",
    "x" * 70_000,
]
HOSTILE_NUMBERS: list[Any] = [
    math.nan,
    math.inf,
    -math.inf,
    2**63,
    -(2**63) - 1,
    2**64,
    10**400,
    -1,
    0,
    1e308,
    -1e-320,
    253402300800000000,  # 10000-01-01 in µs
    -62135596800000001,  # before year 1 in µs
    True,
]


@dataclass
class TargetResult:
    name: str
    inputs: int = 0
    accepted: int = 0
    rejected: int = 0
    crashes: int = 0
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)  # the first crashes: type, message, input

    @property
    def per_second(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0


@dataclass
class FuzzReport:
    seed: int
    total_inputs: int
    crashes: int
    seconds: float
    targets: list[TargetResult]

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "total_inputs": self.total_inputs,
            "crashes": self.crashes,
            "seconds": round(self.seconds, 3),
            "inputs_per_second": round(self.total_inputs / self.seconds, 1) if self.seconds else 0,
            "targets": [{**asdict(t), "per_second": round(t.per_second, 1)} for t in self.targets],
        }

    def to_markdown(self) -> str:
        lines = [
            "# Fuzzing",
            "",
            f"Seed {self.seed}: {self.total_inputs:,} inputs in {self.seconds:.1f} s, **{self.crashes} crashes** (target 0).",
            "",
            "| target | inputs | accepted | rejected (named) | crashes | inputs/s |",
            "|---|---|---|---|---|---|",
        ]
        for t in self.targets:
            lines.append(
                f"| {t.name} | {t.inputs:,} | {t.accepted:,} | {t.rejected:,} | {t.crashes} | {t.per_second:,.0f} |"
            )
        for t in self.targets:
            for ex in t.examples:
                lines.append(f"\n- {t.name}: `{ex}`")
        return "\n".join(lines) + "\n"


# --- input generation --------------------------------------------------------------------------


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            del b[rng.randrange(len(b)) :]
        elif op == 2:
            i = rng.randrange(len(b) + 1)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 3 and len(b) > 2:
            i, j = sorted(rng.sample(range(len(b)), 2))
            b[i:j] = b[i:j][::-1]
        else:
            b += rng.choice([b"\xff\xff\xff\xff", b"\x00", b"\xc1", b"\xdd\xff\xff\xff\xff", b"\xcf" + b"\xff" * 8])
    return bytes(b)


def hostile_value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if r < 0.3:
        return rng.choice(HOSTILE_STRINGS)
    if r < 0.6:
        return rng.choice(HOSTILE_NUMBERS)
    if r < 0.7:
        return None
    if r < 0.8 and depth < 4:
        return [hostile_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if r < 0.9 and depth < 4:
        return {
            rng.choice(["value", "ts_us", "unit", "quality", "v", "t", "name", "data"]): hostile_value(rng, depth + 1)
        }
    return rng.uniform(-1e6, 1e6)


def deep(n: int) -> str:
    return "[" * n + "]" * n


def json_bytes(doc: Any) -> bytes:
    # json.dumps writes NaN/Infinity and lone surrogates escaped: both reach the decoder as such.
    return json.dumps(doc, ensure_ascii=True).encode()


# --- targets -------------------------------------------------------------------------------------


def _first_source(path: Path, kind: type[Any]) -> Any:
    cfg = EdgeConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    return next(s for s in cfg.sources if isinstance(s, kind))


def mqtt_target() -> tuple[Callable[[random.Random], Any], Callable[[Any], object], tuple[type[BaseException], ...]]:
    src: MqttSource = _first_source(EXAMPLES / "mqtt" / "example.yaml", MqttSource)
    dec = MqttDecoder(src)
    topics = [
        "plantstream-sim/fiber/acme/nantong/spinning/line3/pos12/winder.speed",
        "gw7/x/temp",
        "gw9/acme/nantong/spinning/line3",
        "plantstream-sim/fiber/\ud800/t",
        "unmatched/topic",
    ]
    seeds = [
        json_bytes({"value": 1.5, "ts_us": 1_700_000_000_000_000, "unit": "m/min", "quality": "good"}),
        json_bytes({"data": {"v": 2, "t": 1_700_000_000_000}}),
        json_bytes({"data": {"readings": [{"name": "temp", "t": 1_700_000_000_000, "v": 21.5}]}}),
    ]

    def gen(rng: random.Random) -> tuple[str, bytes]:
        r = rng.random()
        if r < 0.45:
            payload = mutate(rng, rng.choice(seeds))
        elif r < 0.9:
            doc = {
                "value": hostile_value(rng),
                "ts_us": hostile_value(rng),
                "unit": hostile_value(rng),
                "quality": hostile_value(rng),
                "data": {"v": hostile_value(rng), "t": hostile_value(rng), "readings": [hostile_value(rng)]},
            }
            payload = json_bytes(doc)
        else:
            payload = deep(rng.choice([10, 1000, 100_000])).encode()
        return rng.choice(topics), payload

    def run(inp: tuple[str, bytes]) -> object:
        return dec.decode_all(inp[0], inp[1], 1_700_000_000_000_000)

    return gen, run, (MqttMalformed,)


def sparkplug_target() -> tuple[
    Callable[[random.Random], Any], Callable[[Any], object], tuple[type[BaseException], ...]
]:
    src: SparkplugSource = _first_source(EXAMPLES / "sparkplug" / "example.yaml", SparkplugSource)
    dec = SparkplugDecoder(src)
    group = src.group_ids[0]
    birth = pb.Payload(timestamp=1_700_000_000_000, seq=0)
    birth.metrics.add(name="bdSeq", datatype=UINT64, long_value=1)
    birth.metrics.add(name="Inputs/Force", alias=1, datatype=DOUBLE, double_value=1.0)
    birth.metrics.add(name="count", alias=2, datatype=INT64, long_value=5)
    birth.metrics.add(name="label", alias=3, datatype=STRING, string_value="x")
    dec.handle(f"spBv1.0/{group}/NBIRTH/gw1", bytes(birth.SerializeToString()), 1_700_000_000_000_000)
    data = pb.Payload(timestamp=1_700_000_000_001, seq=1)
    data.metrics.add(alias=1, double_value=2.5)
    data.metrics.add(alias=2, long_value=2**64 - 1)
    seeds = [bytes(birth.SerializeToString()), bytes(data.SerializeToString())]
    kinds = ["NBIRTH", "NDATA", "DBIRTH", "DDATA", "NDEATH", "DDEATH", "STATE", "NCMD"]

    def gen(rng: random.Random) -> tuple[str, bytes]:
        kind = rng.choice(kinds)
        topic = f"spBv1.0/{group}/{kind}/gw1" + ("/press" if kind.startswith("D") else "")
        if rng.random() < 0.1:
            topic = rng.choice(["spBv1.0", f"spBv1.0/{group}/NDATA", "x/y/z/w", f"spBv1.0/{group}/NDATA/\ud800"])
        if rng.random() < 0.5:
            return topic, mutate(rng, rng.choice(seeds))
        p = pb.Payload()
        if rng.random() < 0.8:
            p.timestamp = rng.choice([0, 1, 2**64 - 1, 1_700_000_000_000, 253402300800000])
        p.seq = rng.randrange(256)
        for _ in range(rng.randint(0, 4)):
            m = p.metrics.add(alias=rng.choice([1, 2, 3, 99, 2**64 - 1]), datatype=rng.randrange(0, 40))
            choice = rng.randrange(5)
            if choice == 0:
                m.double_value = rng.choice([math.nan, math.inf, 1e308, -0.0])
            elif choice == 1:
                m.long_value = rng.choice([0, 2**63, 2**64 - 1])
            elif choice == 2:
                m.string_value = rng.choice(["ok", "\u0000", "x" * 5000])
            elif choice == 3:
                m.timestamp = rng.choice([0, 2**64 - 1, 253402300800000])
                m.int_value = rng.randrange(2**32)
            else:
                m.is_null = True
        return topic, bytes(p.SerializeToString())

    def run(inp: tuple[str, bytes]) -> object:
        return dec.handle(inp[0], inp[1], 1_700_000_000_000_000)

    return gen, run, (SpbMalformed,)


def codec_target() -> tuple[Callable[[random.Random], Any], Callable[[Any], object], tuple[type[BaseException], ...]]:
    reading = Reading(
        "steel", "acme/site/sm/caster", "t", 1_700_000_000_000_000, 1.5, "degC", Quality.GOOD, Origin.OPCUA, "s", 1
    )
    agg = Aggregate(
        "steel",
        "acme/site/sm/caster",
        "t",
        "1s",
        1_700_000_000_000_000,
        1,
        0,
        1.0,
        1.0,
        1.0,
        1.0,
        0.0,
        1.0,
        "degC",
        None,
    )
    ctx = ContextEvent(ContextKind.LOT_START, "steel", "acme/site/sm/caster", 1_700_000_000_000_000, lot="H1")
    seeds = [
        (codec.decode_readings, codec.encode_readings([reading, reading])),
        (codec.decode_aggregates, codec.encode_aggregates([agg])),
        (codec.decode_context, codec.encode_context(ctx)),
        (codec.decode_tag_meta, codec.encode_tag_meta(TagMeta("steel", "t", "acme/site", "degC"))),
        (
            codec.decode_deviation,
            codec.encode_deviation_map({"plant": "steel", "tag": "t", "kind": "process", "start_us": 1}),
        ),
    ]

    def gen(rng: random.Random) -> tuple[Callable[[bytes], object], bytes]:
        fn, seed = rng.choice(seeds)
        r = rng.random()
        if r < 0.8:
            return fn, mutate(rng, seed)
        if r < 0.9:
            return fn, seed[:4] + bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        return fn, bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))

    def run(inp: tuple[Callable[[bytes], object], bytes]) -> object:
        return inp[0](inp[1])

    return gen, run, (CodecError,)


def config_target(
    tmp: Path,
) -> tuple[Callable[[random.Random], Any], Callable[[Any], object], tuple[type[BaseException], ...]]:
    from plantstream.config import load_yaml

    base = (EXAMPLES / "mqtt" / "example.yaml").read_text(encoding="utf-8")
    path = tmp / "edge.yaml"
    keys = ["deadband_pct", "qos", "max_payload_bytes", "session_expiry_s", "grade", "unit", "datatype", "equipment"]

    def gen(rng: random.Random) -> bytes:
        r = rng.random()
        if r < 0.5:
            return mutate(rng, base.encode())
        if r < 0.85:
            doc = yaml.safe_load(base)
            src = doc["sources"][0]
            src[rng.choice(keys)] = hostile_value(rng)
            if rng.random() < 0.5:
                doc[rng.choice(["batch", "buffer", "timestamps", "kafka"])] = hostile_value(rng)
            text = yaml.safe_dump(doc, allow_unicode=False)
        else:
            hostile = ["&a [*a]", "!!python/object:os.system ['true']", "a: &x\n  b: *x\n" * 3, deep(500), "\ud800: 1"]
            text = rng.choice(hostile)
        # What a file could hold: lone surrogates become their (invalid) UTF-8 bytes.
        return text.encode("utf-8", "surrogatepass")

    def run(data: bytes) -> object:
        path.write_bytes(data)
        return load_yaml(path, EdgeConfig)

    return gen, run, (ConfigError,)


def time_param_target() -> tuple[
    Callable[[random.Random], Any], Callable[[Any], object], tuple[type[BaseException], ...]
]:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    seeds = ["-15m", "now", "2026-12-01T00:00:00Z", "-1.5h", "2026-12-01"]

    def gen(rng: random.Random) -> str:
        r = rng.random()
        if r < 0.6:
            return mutate(rng, rng.choice(seeds).encode()).decode("utf-8", "surrogateescape")
        if r < 0.8:
            return f"-{rng.choice(['1e308', '99999999999', '0', '1.', '.5', '-5'])}{rng.choice('smhdx')}"
        return rng.choice(HOSTILE_STRINGS)

    def run(text: str) -> object:
        return parse_time(text, now, "start")

    return gen, run, (BadParam,)


def pull_request_target() -> tuple[
    Callable[[random.Random], Any], Callable[[Any], object], tuple[type[BaseException], ...]
]:
    fields = ["plant", "start", "end", "interval", "tags", "lots", "split", "gap", "equipment", "labels", "resample"]
    base = {"plant": "steel", "start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z", "interval": "1s"}

    def gen(rng: random.Random) -> dict[str, Any]:
        doc: dict[str, Any] = dict(base)
        for _ in range(rng.randint(1, 4)):
            doc[rng.choice(fields)] = hostile_value(rng)
        if rng.random() < 0.1:
            doc[rng.choice(HOSTILE_STRINGS)] = 1
        return doc

    def run(doc: dict[str, Any]) -> object:
        return validate_request(doc)

    return gen, run, (RequestError,)


# --- runner --------------------------------------------------------------------------------------


def fuzz(total: int, seed: int = 20261201, progress: Callable[[str], None] | None = None) -> FuzzReport:
    """``total`` inputs spread over the targets (the slow YAML target gets a smaller share)."""
    with tempfile.TemporaryDirectory(prefix="plantstream-fuzz-") as tmp:
        targets = [
            ("mqtt_json", mqtt_target(), 0.25),
            ("sparkplug", sparkplug_target(), 0.25),
            ("wire_codec", codec_target(), 0.25),
            ("config_yaml", config_target(Path(tmp)), 0.005),  # YAML + pydantic: ~100 inputs/s
            ("monitor_time_params", time_param_target(), 0.145),
            ("pull_request", pull_request_target(), 0.10),
        ]
        results: list[TargetResult] = []
        t_all = time.perf_counter()
        for name, (gen, run, allowed), share in targets:
            res = run_target(name, gen, run, allowed, max(1, int(total * share)), random.Random(f"{seed}/{name}"))
            results.append(res)
            if progress is not None:
                progress(f"fuzz {name}: {res.inputs:,} inputs, {res.crashes} crashes, {res.per_second:,.0f}/s")
        seconds = time.perf_counter() - t_all
    return FuzzReport(seed, sum(r.inputs for r in results), sum(r.crashes for r in results), seconds, results)


def run_target(
    name: str,
    gen: Callable[[random.Random], Any],
    run: Callable[[Any], object],
    allowed: tuple[type[BaseException], ...],
    n: int,
    rng: random.Random,
) -> TargetResult:
    res = TargetResult(name)
    t0 = time.perf_counter()
    for inp in _inputs(gen, rng, n):
        res.inputs += 1
        try:
            run(inp)
            res.accepted += 1
        except allowed:
            res.rejected += 1
        except Exception as exc:  # everything else is a crash: counted with the input
            res.crashes += 1
            if len(res.examples) < 5:
                res.examples.append(f"{type(exc).__name__}: {str(exc)[:120]} <- {repr(inp)[:200]}")
    res.seconds = time.perf_counter() - t0
    return res


def _inputs(gen: Callable[[random.Random], Any], rng: random.Random, n: int) -> Iterator[Any]:
    for _ in range(n):
        yield gen(rng)


def run_and_report(
    out: Path, total: int, seed: int = 20261201, progress: Callable[[str], None] | None = None
) -> FuzzReport:
    report = fuzz(total, seed, progress)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fuzz.json").write_text(json.dumps(report.to_json(), indent=2))
    (out / "fuzz.md").write_text(report.to_markdown())
    return report
