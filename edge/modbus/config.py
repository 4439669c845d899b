"""Modbus TCP source config: polled registers and coils, one tag per address."""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import Field, field_validator, model_validator

from plantstream.contract import TagMeta
from plantstream.edge.configbase import Backoff, TagBase, TagDefaults, _check_id, _Strict

DataType = Literal["int16", "uint16", "int32", "uint32", "float32", "float64", "bool"]
Table = Literal["holding", "input", "coil", "discrete_input"]
Order = Literal["big", "little"]

# Registers (16-bit words) each data type takes.
WORDS: dict[str, int] = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4, "bool": 1}


class ModbusTag(TagBase):
    """One value: a register (or several, for 32/64-bit types) or a coil, polled at the source's interval."""

    table: Table = Field("holding", description="holding / input registers, coil / discrete_input bits")
    address: int = Field(ge=0, le=65535, description="0-based protocol address (register 40001 is holding 0)")
    data_type: DataType | None = Field(
        None, description="default: bool for coil / discrete_input, uint16 for registers; bool on a register = non-zero"
    )
    word_order: Order | None = Field(None, description="32/64-bit types: big = high word first; default: the source's")
    byte_order: Order | None = Field(None, description="bytes in each register: big = high byte first (Modbus)")
    scale: float = Field(1.0, description="value = raw * scale + offset")
    offset: float = 0.0
    valid_min: float | None = Field(None, description="a value below this is delivered flagged bad (quality 2)")
    valid_max: float | None = Field(None, description="a value above this is delivered flagged bad (quality 2)")

    @property
    def kind(self) -> DataType:
        if self.data_type is not None:
            return self.data_type
        return "bool" if self.table in ("coil", "discrete_input") else "uint16"

    @property
    def words(self) -> int:
        return 1 if self.table in ("coil", "discrete_input") else WORDS[self.kind]

    @model_validator(mode="after")
    def _shape(self) -> ModbusTag:
        if self.table in ("coil", "discrete_input") and self.kind != "bool":
            raise ValueError(f"data_type {self.kind} cannot be read from a {self.table} (one bit): use bool")
        if self.kind == "bool" and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError("scale and offset do not apply to a bool")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.address + self.words > 65536:
            raise ValueError(f"address {self.address} + {self.words} registers of {self.kind} pass 65535")
        if self.valid_min is not None and self.valid_max is not None and self.valid_min > self.valid_max:
            raise ValueError(f"valid_min ({self.valid_min}) must not be above valid_max ({self.valid_max})")
        return self

    @property
    def value_datatype(self) -> Literal["float", "int", "bool"]:
        """The TagMeta datatype of the delivered value."""
        if self.kind == "bool":
            return "bool"
        if self.kind in ("int16", "uint16", "int32", "uint32") and self.scale == 1.0 and self.offset == 0.0:
            return "int"
        return "float"

    def address_text(self) -> str:
        return f"{self.table}:{self.address}"

    def meta(self, plant: str, defaults: TagDefaults, address: str) -> TagMeta:
        """TagMeta with the register in ``source_address`` and, unless set, the datatype the
        register's data type and scale give."""
        m = super().meta(plant, defaults, f"{address}:{self.address_text()}")
        return m if self.datatype is not None else dataclasses.replace(m, datatype=self.value_datatype)


class ModbusSource(_Strict):
    """A Modbus TCP server (PLC, gateway): holding / input registers and coils polled at an interval."""

    type: Literal["modbus"]
    id: str
    host: str = Field(min_length=1)
    port: int = Field(502, ge=1, le=65535)
    unit_id: int = Field(1, ge=0, le=255, description="Modbus unit (slave / device) id")
    poll_interval_ms: float = Field(1000, ge=10, le=3_600_000)
    timeout_s: float = Field(2.0, gt=0, le=60, description="per request; a timeout counts as a lost connection")
    word_order: Order = Field("big", description="default for tags: big = high word first")
    byte_order: Order = Field("big", description="default for tags: big = high byte first (the Modbus standard)")
    max_block: int = Field(
        100, ge=1, le=125, description="registers per read request at most (adjacent tags share a request)"
    )
    max_gap: int = Field(8, ge=0, le=100, description="unused registers a request may span to join two tags")
    only_changes: bool = Field(False, description="deliver a tag only when its value changed since the last poll")
    reconnect: Backoff = Field(default_factory=lambda: Backoff.model_validate({}))
    defaults: TagDefaults = Field(default_factory=TagDefaults)
    tags: list[ModbusTag] = Field(min_length=1)

    _check = field_validator("id")(_check_id)

    @model_validator(mode="after")
    def _unique_tags(self) -> ModbusSource:
        seen: set[str] = set()
        for t in self.tags:
            if t.tag in seen:
                raise ValueError(f"tag {t.tag!r} is listed twice")
            seen.add(t.tag)
        return self

    def word_order_of(self, t: ModbusTag) -> Order:
        return t.word_order or self.word_order

    def byte_order_of(self, t: ModbusTag) -> Order:
        return t.byte_order or self.byte_order
