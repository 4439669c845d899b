"""The shared vocabulary of standard properties (``vocabulary.yaml`` beside this module; docs/vocabulary.md).

A tag carries a standard property id (``TagMeta.std_property``) so the same quantity from two plants
lines up by property, not by tag name. Ids are ``<prefix>:<path>``, the path kebab-case segments
joined by ``.``; each ``.`` narrows the property before it (``ps:temperature.melt`` is a
``ps:temperature``), and the broader one is in the vocabulary with the same kind and unit.

Every property's ``unit`` is the canonical unit :mod:`plantstream.domain.units` normalizes its
quantity to, checked at load: whatever carries the property downstream of streams (clean readings,
aggregates, pulled columns) is in that unit. Loading checks everything and raises
:class:`VocabularyError` (a ConfigError: exit 2) naming the file, line, property and key.

The vocabulary in use is the shipped file unless the setting ``vocabulary_path``
(``PLANTSTREAM_VOCABULARY``) names another one (a platform's copy with more properties).
Core layer: imports only core modules (config, domain.units) and third-party libraries.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from plantstream.config import ConfigError
from plantstream.domain.units import PASSTHROUGH, UnitError, compile_converter

SHIPPED = Path(__file__).with_name("vocabulary.yaml")
_SEGMENT = r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*"
_PATH = re.compile(rf"^{_SEGMENT}(?:\.{_SEGMENT})*$")
_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,15}$")
# Kinds whose values have no unit (a run flag, a counter, a lot id): no unit, no UCUM code.
UNITLESS_KINDS = frozenset({"state", "count", "identifier"})


class VocabularyError(ConfigError):
    """A vocabulary file that cannot be used, or a property id / unit that does not fit it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StdProperty(_Strict):
    """One standard property."""

    id: str = Field(min_length=3, max_length=120)
    label: str = Field(min_length=1)
    description: str = Field(min_length=1)
    kind: str = Field(min_length=1, description="quantity kind, e.g. temperature; state/count/identifier: no unit")
    unit: str = Field("", description="canonical unit, pint form (what streams normalizes the quantity to)")
    ucum: str = Field("", description="UCUM code of the unit")
    range: tuple[float, float] | None = Field(None, description="typical range in the unit (informative)")
    spec_properties: tuple[str, ...] = Field((), description="material-spec property names this property is")

    @property
    def broader(self) -> str:
        """The id this one narrows ('' for a top-level property)."""
        head, dot, _ = self.id.rpartition(".")
        return head if dot else ""


class _File(_Strict):
    vocabulary: str = Field(min_length=1)
    prefix: str
    version: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    iri: str = Field(min_length=1, description="base IRI: a property's IRI is iri + its path")
    properties: list[dict[str, Any]] = Field(min_length=1)


class Vocabulary:
    """A loaded, validated vocabulary (immutable)."""

    def __init__(self, name: str, prefix: str, version: str, iri: str, props: list[StdProperty], source: str) -> None:
        self.name, self.prefix, self.version, self.iri, self.source = name, prefix, version, iri, source
        self._props = {p.id: p for p in props}

    def __len__(self) -> int:
        return len(self._props)

    def __iter__(self) -> Iterator[StdProperty]:
        return iter(self._props.values())

    def __contains__(self, ident: object) -> bool:
        return ident in self._props

    def get(self, ident: str) -> StdProperty:
        """The property ``ident``; VocabularyError naming the vocabulary when it has none."""
        p = self._props.get(ident)
        if p is None:
            near = sorted(i for i in self._props if i.startswith(ident.partition(".")[0]))[:6]
            hint = f"; similar: {', '.join(near)}" if near and near != [ident] else ""
            raise VocabularyError(f"unknown standard property {ident!r} in vocabulary {self.name} {self.version}{hint}")
        return p

    def property_iri(self, ident: str) -> str:
        return self.iri + self.get(ident).id.partition(":")[2]

    def is_a(self, ident: str, broader: str) -> bool:
        """Whether ``ident`` is ``broader`` or narrows it (search by a broader property)."""
        return ident == broader or ident.startswith(broader + ".")

    def check_tag(self, ident: str, unit: str, datatype: str = "float") -> StdProperty:
        """The property a tag of ``unit`` may carry; VocabularyError when the id is unknown or the
        unit does not convert to the property's canonical unit (the reason names both units)."""
        p = self.get(ident)
        unit = unit.strip()
        if p.kind in UNITLESS_KINDS:
            if unit not in PASSTHROUGH:
                raise VocabularyError(f"{ident} ({p.kind}) has no unit; the tag's unit {unit!r} must be empty")
            return p
        if datatype in ("bool", "str"):
            raise VocabularyError(f"{ident} is a {p.kind} in {p.unit}; a {datatype} tag cannot carry it")
        try:
            got = compile_converter(unit).canonical
        except UnitError as exc:
            raise VocabularyError(f"unit {unit!r} cannot be converted to {ident}'s unit {p.unit!r}: {exc}") from None
        if got != p.unit:
            raise VocabularyError(
                f"unit {unit!r} cannot be converted to {ident}'s unit {p.unit!r} ({p.kind})"
                + (f"; it is a quantity in {got!r}" if got and unit not in PASSTHROUGH else "")
            )
        return p


def _line(node: yaml.Node | None, index: int | None, key: str | None) -> int | None:
    """1-based line of ``properties[index].key`` (or of the entry, or the file)."""
    if not isinstance(node, yaml.MappingNode):
        return None
    line = int(node.start_mark.line) + 1
    seq = next((v for k, v in node.value if k.value == "properties"), None)
    if index is None or not isinstance(seq, yaml.SequenceNode) or index >= len(seq.value):
        return line
    entry = seq.value[index]
    line = int(entry.start_mark.line) + 1
    if key and isinstance(entry, yaml.MappingNode):
        for k, _ in entry.value:
            if k.value == key:
                return int(k.start_mark.line) + 1
    return line


def load_vocabulary(path: str | Path = SHIPPED) -> Vocabulary:
    """Load and check ``path``: schema, ids, duplicates, broader properties, units and UCUM codes.

    Raises VocabularyError naming ``file:line: property 'id': key 'k': problem`` for the first
    problem of each entry (all entries are checked, every problem reported)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except OSError as exc:
        raise VocabularyError(f"{p}: cannot read vocabulary: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise VocabularyError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise VocabularyError(f"{p}:1: a vocabulary is a mapping with vocabulary, prefix, version, iri, properties")
    try:
        head = _File.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err["loc"]
        key = ".".join(str(x) for x in loc) or "(top level)"
        index = loc[1] if len(loc) > 1 and loc[0] == "properties" and isinstance(loc[1], int) else None
        raise VocabularyError(f"{p}:{_line(node, index, None)}: key '{key}': {err['msg']}") from None
    if not _PREFIX.match(head.prefix):
        raise VocabularyError(f"{p}:{_line(node, None, None)}: key 'prefix': must be 1-16 lowercase letters/digits")
    problems: list[str] = []
    props: list[StdProperty] = []
    seen: dict[str, int] = {}

    def bad(i: int, ident: str, key: str | None, msg: str) -> None:
        where = (
            f"{p}:{_line(node, i, key)}: property {ident!r}" if ident else f"{p}:{_line(node, i, key)}: properties[{i}]"
        )
        problems.append(where + (f": key '{key}'" if key else "") + f": {msg}")

    for i, entry in enumerate(head.properties):
        ident = str(entry.get("id", "")) if isinstance(entry, dict) else ""
        try:
            prop = StdProperty.model_validate(entry)
        except ValidationError as exc:
            err = exc.errors()[0]
            bad(i, ident, str(err["loc"][0]) if err["loc"] else None, err["msg"])
            continue
        pre, colon, path_ = prop.id.partition(":")
        if not colon or pre != head.prefix or not _PATH.match(path_):
            bad(i, ident, "id", f"must be '{head.prefix}:' and kebab-case segments joined by '.', e.g. "
                f"{head.prefix}:temperature.melt")  # fmt: skip
            continue
        if prop.id in seen:
            bad(
                i,
                ident,
                "id",
                f"duplicate id (first at properties[{seen[prop.id]}], line {_line(node, seen[prop.id], 'id')})",
            )
            continue
        seen[prop.id] = i
        msg = _unit_problem(prop)
        if msg:
            bad(i, ident, msg[0], msg[1])
            continue
        if prop.range is not None and not prop.range[0] < prop.range[1]:
            bad(i, ident, "range", f"must be [min, max] with min < max, got {list(prop.range)}")
            continue
        props.append(prop)
    by_id = {q.id: q for q in props}
    for q in props:
        if q.broader:
            up = by_id.get(q.broader)
            if up is None:
                bad(seen[q.id], q.id, "id", f"narrows {q.broader!r}, which is not in the vocabulary")
            elif (up.kind, up.unit) != (q.kind, q.unit):
                bad(seen[q.id], q.id, "unit", f"must share kind and unit with {up.id} ({up.kind}, {up.unit!r})")
    owners: dict[str, str] = {}
    for q in props:
        for s in q.spec_properties:
            if s in owners:
                bad(seen[q.id], q.id, "spec_properties", f"{s!r} is already mapped to {owners[s]}")
            owners[s] = q.id
    if problems:
        raise VocabularyError("\n".join(problems))
    return Vocabulary(head.vocabulary, head.prefix, head.version, head.iri, props, str(p))


def _unit_problem(prop: StdProperty) -> tuple[str, str] | None:
    """(key, message) when the unit or UCUM code does not fit the kind, else None."""
    if prop.kind in UNITLESS_KINDS:
        if prop.unit or prop.ucum:
            return ("unit" if prop.unit else "ucum"), f"a {prop.kind} has no unit and no UCUM code"
        return None
    if not prop.unit:
        return "unit", f"a {prop.kind} needs its canonical unit (pint form)"
    try:
        canonical = compile_converter(prop.unit).canonical
    except UnitError as exc:
        return "unit", str(exc)
    if canonical != prop.unit:
        # Anything carrying the property after streams is in the canonical unit: the vocabulary says so too.
        return "unit", f"{prop.unit!r} is not canonical: plantstream normalizes this quantity to {canonical!r}"
    if not prop.ucum.strip():
        return "ucum", f"missing: the UCUM code of {prop.unit!r}"
    return None


@functools.cache
def _cached(path: str) -> Vocabulary:
    return load_vocabulary(path)


def vocabulary_path() -> Path:
    """The vocabulary in use: the setting ``vocabulary_path`` (PLANTSTREAM_VOCABULARY) or the shipped file."""
    import os

    from plantstream.config import Settings

    # Read the one variable only: a vocabulary lookup must not fail on an unrelated bad setting.
    value = os.environ.get(Settings.ENV["vocabulary_path"], "").strip()
    return Path(value) if value else SHIPPED


def current() -> Vocabulary:
    """The vocabulary in use, loaded once per path (VocabularyError when the file is bad)."""
    return _cached(str(vocabulary_path()))
