"""Configuration reference generated from the pydantic models, so the docs cannot drift from the code.

``plantstream config-docs`` writes ``docs/config/<name>.md`` (one file per YAML a user writes);
``--check`` exits 1 when a committed file differs from what the code generates (a test runs it).
"""

from __future__ import annotations

import importlib
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import annotated_types as at
import click
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


@dataclass(frozen=True, slots=True)
class Doc:
    name: str
    target: str  # module:Class
    title: str
    used_by: str


DOCS = (
    Doc("edge", "plantstream.edge.config:EdgeConfig", "Edge agent", "plantstream edge run|check --config FILE"),
    Doc("streams", "plantstream.streams.config:StreamsConfig", "Streams worker", "plantstream streams worker --config FILE"),
    Doc("sink", "plantstream.sinks.runner:SinkConfig", "Sink", "plantstream sink run --config FILE"),
    Doc("monitor", "plantstream.monitor.auth:MonitorConfig", "Live monitor", "plantstream monitor --config FILE"),
    Doc("dataset-pull", "plantstream.domain.pullrequest:PullRequest", "Dataset pull request",
        "plantstream dataset pull FILE; POST /api/dataset-pulls"),
)  # fmt: skip

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "config"


def _load(target: str) -> type[BaseModel]:
    module, _, name = target.partition(":")
    cls = getattr(importlib.import_module(module), name)
    assert isinstance(cls, type) and issubclass(cls, BaseModel), target
    return cls


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]" if args else name
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _models_in(tp: Any) -> Iterator[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        yield tp
    for a in typing.get_args(tp):
        yield from _models_in(a)


def _default(f: FieldInfo) -> str:
    if f.default_factory is not None:
        value = f.default_factory()  # type: ignore[call-arg]
    elif f.default is PydanticUndefined:
        return "**required**"
    else:
        value = f.default
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, BaseModel):
        return "(see below)"
    if isinstance(value, Path):
        value = str(value)
    if value is None:
        return "null"
    text = repr(value) if isinstance(value, str) else str(value).replace("'", '"')
    return f"`{text}`"


_BOUNDS: tuple[tuple[type, str, str], ...] = (
    (at.Ge, "ge", "≥"), (at.Gt, "gt", ">"), (at.Le, "le", "≤"), (at.Lt, "lt", "<"),
    (at.MinLen, "min_length", "min length"), (at.MaxLen, "max_length", "max length"),
)  # fmt: skip


def _constraints(f: FieldInfo) -> str:
    return ", ".join(
        f"{sym} {getattr(m, attr)}" for m in f.metadata for kind, attr, sym in _BOUNDS if isinstance(m, kind)
    )


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def render(doc: Doc) -> str:
    root = _load(doc.target)
    lines = [
        f"# {doc.title} configuration",
        "",
        f"Used by `{doc.used_by}`. Generated from `{doc.target}` by `plantstream config-docs`; do not edit.",
        "Errors name the file, line and key"
        + ("; unknown keys are errors." if root.model_config.get("extra") == "forbid" else "."),
        "",
    ]
    seen: list[type[BaseModel]] = []
    queue = [root]
    while queue:
        model = queue.pop(0)
        if model in seen:
            continue
        seen.append(model)
        heading = "Top level" if model is root else f"`{model.__name__}`"
        lines += [f"## {heading}", ""]
        desc = (model.__doc__ or "").strip()
        if desc and model is not root:
            lines += [_cell(desc.split("\n\n")[0]), ""]
        extra = model.model_config.get("extra")
        if extra == "allow":
            lines += ["Other keys are accepted and passed through.", ""]
        lines += ["| key | type | default | constraints | description |", "|---|---|---|---|---|"]
        for name, f in model.model_fields.items():
            key = f.alias or name
            lines.append(
                f"| `{key}` | {_cell(_type_name(f.annotation))} | {_cell(_default(f))} | {_cell(_constraints(f))} "
                f"| {_cell(f.description or '')} |"
            )
            queue.extend(m for m in _models_in(f.annotation) if m not in seen)
        lines.append("")
    return "\n".join(lines)


def generate() -> dict[str, str]:
    return {f"{d.name}.md": render(d) for d in DOCS}


@click.command("config-docs")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True)
@click.option("--check", is_flag=True, help="exit 1 if a file in --out differs from what the code generates")
def config_docs(out: Path, check: bool) -> None:
    """Write the configuration reference (docs/config/*.md) from the pydantic models."""
    stale = []
    for name, text in generate().items():
        path = out / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
            continue
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        click.echo(f"wrote {path}")
    if stale:
        click.echo(f"out of date (run `plantstream config-docs`): {', '.join(stale)}", err=True)
        sys.exit(1)
