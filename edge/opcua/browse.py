"""Walk an OPC-UA server's address space and write an edge config the agent accepts as is.

Contract: starting at the Objects folder (namespace 0 - Server, Aliases - is skipped), follow
hierarchical references down to ``depth`` levels; every scalar Variable with a value type the
agent can carry (Boolean, integers, Float, Double, String; not arrays, structures, DateTime) whose browse name matches ``name_filter`` becomes a tag. Equipment = ``equipment_prefix``
+ the path of parent objects (at most 5 ISA-95 levels in total, the deepest kept); tag = the browse
path joined with ``.`` (made unique). Nodes that cannot be read are skipped and counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaError

from plantstream.edge.config import EdgeConfig

# OPC-UA built-in DataType node ids (ns=0) -> the agent's datatype
_TYPES: dict[int, str] = {
    1: "bool",
    2: "int",  # SByte
    3: "int",  # Byte
    4: "int",  # Int16
    5: "int",  # UInt16
    6: "int",  # Int32
    7: "int",  # UInt32
    8: "int",  # Int64
    9: "int",  # UInt64
    10: "float",  # Float
    11: "float",  # Double
    12: "str",  # String
    26: "float",  # Number (abstract)
    27: "int",  # Integer
    28: "int",  # UInteger
}
_SAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


@dataclass(slots=True)
class Found:
    node_id: str
    path: list[str]  # browse names from below Objects to the variable
    datatype: str
    unit: str = ""


@dataclass(slots=True)
class BrowseResult:
    variables: list[Found] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # node id -> why
    visited: int = 0


def _segment(name: str) -> str:
    return _SAFE.sub("_", name).strip("_") or "node"


async def browse(
    client: Client, depth: int = 10, name_filter: str | None = None, node_classes: tuple[str, ...] = ("Variable",)
) -> BrowseResult:
    """Walk from Objects (breadth first, each node once). Raises on a lost connection."""
    pattern = re.compile(name_filter) if name_filter else None
    wanted = {getattr(ua.NodeClass, c) for c in node_classes}
    res = BrowseResult()
    seen: set[ua.NodeId] = set()
    frontier: list[tuple[Node, list[str]]] = [(client.nodes.objects, [])]
    for _level in range(depth):
        nxt: list[tuple[Node, list[str]]] = []
        for node, path in frontier:
            try:
                children = await node.get_children(refs=ObjectIds.HierarchicalReferences)
            except UaError as exc:
                res.skipped[node.nodeid.to_string()] = f"browse failed: {exc}"
                continue
            for child in children:
                # Namespace 0 is the standard's own infrastructure (Server, Aliases, ...), not plant data.
                if child.nodeid in seen or child.nodeid.NamespaceIndex == 0:
                    continue
                seen.add(child.nodeid)
                res.visited += 1
                try:
                    cls = await child.read_node_class()
                    name = (await child.read_browse_name()).Name
                except UaError as exc:
                    res.skipped[child.nodeid.to_string()] = f"unreadable: {exc}"
                    continue
                cpath = [*path, str(name)]
                if cls == ua.NodeClass.Variable and cls in wanted and (pattern is None or pattern.search(str(name))):
                    found = await _variable(child, cpath, res)
                    if found is not None:
                        res.variables.append(found)
                nxt.append((child, cpath))
        frontier = nxt
        if not frontier:
            break
    return res


async def _variable(node: Node, path: list[str], res: BrowseResult) -> Found | None:
    nid = node.nodeid.to_string()
    try:
        rank = await node.read_value_rank()
        dtype: Any = await node.read_data_type()
    except UaError as exc:
        res.skipped[nid] = f"unreadable: {exc}"
        return None
    if rank not in (-1, -2) and rank != ua.ValueRank.Scalar:
        res.skipped[nid] = "not a scalar"
        return None
    kind = _TYPES.get(dtype.Identifier) if dtype.NamespaceIndex == 0 and isinstance(dtype.Identifier, int) else None
    if kind is None:
        # Enumerations and subtypes of the numbers read as ints/floats too; anything else is skipped.
        try:
            base = await node.read_data_type_as_variant_type()
        except Exception:
            base = None
        kind = _TYPES.get(int(base)) if base is not None else None
    if kind is None:
        res.skipped[nid] = f"data type {dtype.to_string()} is not a scalar the agent carries"
        return None
    unit = ""
    try:  # AnalogItemType: EngineeringUnits (EUInformation) property
        eu = await node.get_child("0:EngineeringUnits")
        info = await eu.read_value()
        unit = str(info.DisplayName.Text or "")
    except Exception:
        pass
    return Found(nid, path, kind, unit)


def to_config(
    result: BrowseResult,
    endpoint: str,
    plant: str = "plant",
    agent_id: str = "edge-1",
    source_id: str = "opcua-1",
    equipment_prefix: str = "",
    extra_source: dict[str, Any] | None = None,
) -> EdgeConfig:
    """An EdgeConfig with one OPC-UA source listing every found variable (ValueError if none)."""
    if not result.variables:
        raise ValueError("no variables found (check --depth, --name-filter, and the user's access rights)")
    prefix = [p for p in equipment_prefix.split("/") if p]
    tags: list[dict[str, Any]] = []
    used: set[str] = set()
    for v in result.variables:
        parents = [_segment(p) for p in v.path[:-1]]
        levels = (prefix + parents)[-5:] or ["opcua"]
        tag = ".".join(_segment(p) for p in v.path)[:200]
        base, n = tag, 2
        while tag in used:
            tag = f"{base}~{n}"
            n += 1
        used.add(tag)
        entry: dict[str, Any] = {
            "node_id": v.node_id,
            "tag": tag,
            "equipment": "/".join(levels),
            "datatype": v.datatype,
        }
        if v.unit:
            entry["unit"] = v.unit
        tags.append(entry)
    source: dict[str, Any] = {
        "type": "opcua",
        "id": source_id,
        "endpoint": endpoint,
        **(extra_source or {}),
        "tags": tags,
    }
    return EdgeConfig.model_validate({"agent_id": agent_id, "plant": plant, "sources": [source]})
