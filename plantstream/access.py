"""Who may read what: data grades (GB/T 43697-2024: core / important / general) and member tiers.

A tag's grade is set in the edge config and travels in TagMeta; a requester's tier comes from
their token. The same mapping is enforced in the database (roles over security-barrier views,
see sinks/timescaledb/migrations), so a bug in an API layer cannot leak a core-grade tag.
"""

from __future__ import annotations

import enum

from plantstream.contract import Grade


class Tier(enum.StrEnum):
    OWNER = "owner"  # the plant that produced the data
    MEMBER = "member"  # members of the national data program
    PUBLIC = "public"  # anyone with a public token


READABLE: dict[Tier, frozenset[Grade]] = {
    Tier.OWNER: frozenset({Grade.CORE, Grade.IMPORTANT, Grade.GENERAL}),
    Tier.MEMBER: frozenset({Grade.IMPORTANT, Grade.GENERAL}),
    Tier.PUBLIC: frozenset({Grade.GENERAL}),
}

# Database role per tier (created by the access migration; LOGIN roles are granted these).
DB_ROLE: dict[Tier, str] = {
    Tier.OWNER: "plantstream_owner",
    Tier.MEMBER: "plantstream_member",
    Tier.PUBLIC: "plantstream_public",
}


def may_read(tier: Tier, grade: Grade | str) -> bool:
    return Grade(grade) in READABLE[tier]
