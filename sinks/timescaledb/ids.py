"""Registration of equipment, tags and lots: ids by natural key, cached per sink.

Unknown equipment (with its parents), tags and lots are registered on first sight inside the
flush transaction; ids learned there are cached in a savepoint layer and kept only when the
savepoint or transaction that made them commits (bisection rolls layers back with its savepoints).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg

from plantstream.contract import TagMeta, validate_equipment_path
from plantstream.domain.validate import RuleError, compile_rule

LEVELS = ("enterprise", "site", "area", "line", "unit")


class RecordError(ValueError):
    """A record this sink refuses on its own (before the database sees it)."""


class IdCache:
    """Cache of (kind, plant, name) -> id. Ids learned inside a transaction live in a layer that
    is merged only when the savepoint / transaction that created them commits."""

    def __init__(self) -> None:
        self.committed: dict[tuple[str, str, str], int] = {}
        self.layers: list[dict[tuple[str, str, str], int]] = []

    def get(self, key: tuple[str, str, str]) -> int | None:
        for layer in reversed(self.layers):
            if key in layer:
                return layer[key]
        return self.committed.get(key)

    def put(self, key: tuple[str, str, str], ident: int) -> None:
        (self.layers[-1] if self.layers else self.committed)[key] = ident

    def push(self) -> None:
        self.layers.append({})

    def pop(self, keep: bool) -> None:
        top = self.layers.pop()
        if keep:
            (self.layers[-1] if self.layers else self.committed).update(top)

    def discard_pending(self) -> None:
        self.layers.clear()


def canonical_meta(m: TagMeta) -> TagMeta:
    """The tag as stored: readings arrive from streams in the canonical unit of their quantity, so
    the registry keeps that unit and the engineering range and rate limit converted into it. A tag
    whose unit streams cannot normalize keeps its own (its readings pass through unconverted)."""
    try:
        rule = compile_rule(m)
    except RuleError:
        return m
    if rule.canonical == m.unit:
        return m
    return dataclasses.replace(m, unit=rule.canonical, lo=rule.lo, hi=rule.hi, roc_limit=rule.roc)


class Registry:
    """Ids of equipment, tags and lots for one sink connection (see the module docstring)."""

    def __init__(self) -> None:
        self.cache = IdCache()

    def equipment_id(self, cur: psycopg.Cursor[Any], plant: str, path: str) -> int:
        key = ("equipment", plant, path)
        ident = self.cache.get(key)
        if ident is not None:
            return ident
        try:
            validate_equipment_path(path)
        except ValueError as exc:
            raise RecordError(str(exc)) from None
        parent: int | None = None
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            k = ("equipment", plant, sub)
            got = self.cache.get(k)
            if got is None:
                got = self.upsert_returning(
                    cur,
                    "INSERT INTO equipment (plant, path, name, level, parent_id) VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (plant, path) DO NOTHING RETURNING id",
                    (plant, sub, parts[depth - 1], LEVELS[depth - 1], parent),
                    "SELECT id FROM equipment WHERE plant = %s AND path = %s",
                    (plant, sub),
                )
                self.cache.put(k, got)
            parent = got
        assert parent is not None
        return parent

    def tag_id(self, cur: psycopg.Cursor[Any], plant: str, tag: str, equipment: str, unit: str, datatype: str) -> int:
        key = ("tag", plant, tag)
        ident = self.cache.get(key)
        if ident is not None:
            return ident
        eq = self.equipment_id(cur, plant, equipment)
        ident = self.upsert_returning(
            cur,
            "INSERT INTO tags (plant, tag, equipment_id, unit, datatype) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (plant, tag) DO NOTHING RETURNING id",
            (plant, tag, eq, unit, datatype),
            "SELECT id FROM tags WHERE plant = %s AND tag = %s",
            (plant, tag),
        )
        self.cache.put(key, ident)
        return ident

    def lot_id(self, cur: psycopg.Cursor[Any], plant: str, lot: str, kind: str = "", spec: str = "") -> int:
        key = ("lot", plant, lot)
        ident = self.cache.get(key)
        if ident is not None and not kind and not spec:
            return ident
        if not lot:
            raise RecordError("empty lot id")
        ident = self.upsert_returning(
            cur,
            "INSERT INTO lots AS l (plant, lot, kind, spec_id) VALUES (%s, %s, %s, NULLIF(%s, '')) "
            "ON CONFLICT (plant, lot) DO UPDATE SET kind = COALESCE(NULLIF(EXCLUDED.kind, ''), l.kind), "
            "spec_id = COALESCE(EXCLUDED.spec_id, l.spec_id) "
            "WHERE (NULLIF(EXCLUDED.kind, '') IS NOT NULL AND EXCLUDED.kind <> l.kind) "
            "   OR (EXCLUDED.spec_id IS NOT NULL AND EXCLUDED.spec_id IS DISTINCT FROM l.spec_id) "
            "RETURNING id",
            (plant, lot, kind, spec),
            "SELECT id FROM lots WHERE plant = %s AND lot = %s",
            (plant, lot),
        )
        self.cache.put(key, ident)
        return ident

    @staticmethod
    def upsert_returning(
        cur: psycopg.Cursor[Any], insert: str, args: tuple[Any, ...], select: str, sargs: tuple[Any, ...]
    ) -> int:
        row = cur.execute(insert, args).fetchone()
        if row is None:  # already there (maybe inserted by a concurrent sink that has committed)
            row = cur.execute(select, sargs).fetchone()
        if row is None:
            raise RecordError(f"registration of {sargs} returned no id")
        return int(row[0])

    def tag_meta(self, cur: psycopg.Cursor[Any], m: TagMeta) -> None:
        m = canonical_meta(m)
        eq = self.equipment_id(cur, m.plant, m.equipment)
        ident = self.upsert_returning(
            cur,
            """INSERT INTO tags AS t (plant, tag, equipment_id, unit, datatype, lo, hi, roc_limit, grade, source_address,
                                    spec_property, description, std_property, registered_by)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'meta')
               ON CONFLICT (plant, tag) DO UPDATE SET equipment_id = EXCLUDED.equipment_id, unit = EXCLUDED.unit,
                   datatype = EXCLUDED.datatype, lo = EXCLUDED.lo, hi = EXCLUDED.hi, roc_limit = EXCLUDED.roc_limit,
                   grade = EXCLUDED.grade, source_address = EXCLUDED.source_address,
                   spec_property = EXCLUDED.spec_property, description = EXCLUDED.description,
                   std_property = EXCLUDED.std_property, registered_by = 'meta', updated_at = now()
               WHERE (t.equipment_id, t.unit, t.datatype, t.lo, t.hi, t.roc_limit, t.grade, t.source_address,
                      t.spec_property, t.description, t.std_property, t.registered_by)
                     IS DISTINCT FROM (EXCLUDED.equipment_id, EXCLUDED.unit, EXCLUDED.datatype, EXCLUDED.lo,
                      EXCLUDED.hi, EXCLUDED.roc_limit, EXCLUDED.grade, EXCLUDED.source_address,
                      EXCLUDED.spec_property, EXCLUDED.description, EXCLUDED.std_property, 'meta')
               RETURNING id""",
            (
                m.plant,
                m.tag,
                eq,
                m.unit,
                m.datatype,
                m.lo,
                m.hi,
                m.roc_limit,
                m.grade.value,
                m.source_address,
                m.spec_property,
                m.description,
                m.std_property,
            ),
            "SELECT id FROM tags WHERE plant = %s AND tag = %s",
            (m.plant, m.tag),
        )
        self.cache.put(("tag", m.plant, m.tag), ident)
