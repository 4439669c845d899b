"""The pieces every connector's config model is built from (no connector imports this module's users).

Kept apart from :mod:`plantstream.edge.config` so a connector folder can define its config model
(``edge/<name>/config.py``) without importing the central module that assembles the source union
from the registry.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from plantstream.contract import Grade, TagMeta, validate_equipment_path

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class _Strict(BaseModel):
    # Unknown keys are typos in a config file; reject them so the operator hears about it.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_id(v: str) -> str:
    if not _ID.match(v):
        raise ValueError("must be 1-64 characters of letters, digits, '_', '.', '-' (starting with a letter or digit)")
    return v


class Backoff(_Strict):
    """Exponential reconnect backoff: min_s, doubling up to max_s."""

    min_s: float = Field(0.5, gt=0, le=3600)
    max_s: float = Field(30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _order(self) -> Backoff:
        if self.max_s < self.min_s:
            raise ValueError("max_s must be >= min_s")
        return self


class TagDefaults(_Strict):
    """Metadata applied to a tag where the tag itself does not say."""

    unit: str = ""
    datatype: Literal["float", "int", "bool", "str"] = "float"
    # Fail closed: unstated grades are core; a site lowers this on purpose, per file.
    grade: Grade = Grade.CORE


class TagBase(_Strict):
    # `property` in the file (the word operators use); `std_property` in Python, where `property`
    # would shadow the builtin in the model's namespace.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True)

    tag: str = Field(min_length=1, max_length=200)
    equipment: str
    unit: str | None = None
    datatype: Literal["float", "int", "bool", "str"] | None = None
    lo: float | None = None
    hi: float | None = None
    roc_limit: float | None = Field(None, gt=0)
    grade: Grade | None = None
    spec_property: str = ""
    description: str = ""
    std_property: str = Field(
        "",
        alias="property",
        description="standard property id from the shared vocabulary (docs/vocabulary.md), e.g. ps:temperature.melt",
    )

    @field_validator("equipment")
    @classmethod
    def _equipment(cls, v: str) -> str:
        return validate_equipment_path(v)

    @field_validator("std_property")
    @classmethod
    def _std_property(cls, v: str, info: ValidationInfo) -> str:
        # Checked here (not at start) so the error names this key and line; a unit left to the
        # source's defaults is checked by EdgeConfig, which sees them.
        v = v.strip()
        unit = info.data.get("unit")
        if v:
            check_std_property(v, unit, info.data.get("datatype"))
        return v

    @model_validator(mode="after")
    def _range(self) -> TagBase:
        if self.lo is not None and self.hi is not None and self.lo >= self.hi:
            raise ValueError(f"engineering range lo ({self.lo}) must be below hi ({self.hi})")
        return self

    def meta(self, plant: str, defaults: TagDefaults, address: str) -> TagMeta:
        return TagMeta(
            plant=plant,
            tag=self.tag,
            equipment=self.equipment,
            unit=self.unit if self.unit is not None else defaults.unit,
            datatype=self.datatype or defaults.datatype,
            lo=self.lo,
            hi=self.hi,
            roc_limit=self.roc_limit,
            grade=self.grade or defaults.grade,
            description=self.description,
            source_address=address,
            spec_property=self.spec_property,
            std_property=self.std_property,
        )


def check_std_property(ident: str, unit: str | None, datatype: str | None = None) -> None:
    """ValueError (a config error at the key) when ``ident`` is not in the vocabulary in use or a
    tag of ``unit`` (None: not known yet, only the id is checked) cannot carry it."""
    from plantstream.domain.vocabulary import VocabularyError, current

    try:
        vocab = current()
        if unit is None:
            vocab.get(ident)
        else:
            vocab.check_tag(ident, unit, datatype or "float")
    except VocabularyError as exc:
        raise ValueError(str(exc)) from None


check_id = _check_id
Strict = _Strict


@runtime_checkable
class SourceConfig(Protocol):
    """What the agent reads from any connector's config model (besides its own fields)."""

    @property
    def type(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def tags(self) -> Sequence[TagBase]: ...
    @property
    def defaults(self) -> TagDefaults: ...
