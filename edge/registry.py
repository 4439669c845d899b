"""Connector registry: each connector folder says which ``type`` it serves, with what config model
and factory, so the agent and the config union need no per-connector branch or list.

A connector folder ``edge/<name>/`` holds a module ``connector.py`` with one module attribute::

    CONNECTOR = Connector(
        type="modbus",
        config="plantstream.edge.modbus.config:ModbusSource",   # pydantic model, `type: Literal[...]`
        factory="plantstream.edge.modbus.source:build",         # (cfg, SourceContext) -> Source
        order=40,                                               # position in the union / docs
    )

The references are strings, resolved on first use, so discovering connectors imports nothing
heavy (asyncua, paho, pymodbus) and cannot run into an import cycle with ``edge/config.py``.
:func:`connectors` finds every ``plantstream.edge.<pkg>.connector`` module; a connector living
elsewhere (a site's own package) calls :func:`register` before the config is loaded.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

    from plantstream.config import Settings
    from plantstream.edge.source import Inbox, Source
    from plantstream.edge.vet import Limits


@dataclass(frozen=True, slots=True)
class SourceContext:
    """Everything a factory may need besides its own config (one constructor signature for all)."""

    agent_id: str
    inbox: Inbox
    settings: Settings
    limits: Limits
    # The agent's buffer file; state a connector keeps across restarts lives beside it.
    buffer_path: Path | None = None

    def state_file(self, name: str) -> Path | None:
        """``<buffer stem>.<name>`` beside the buffer, or None without a buffer path."""
        bp = self.buffer_path
        return bp.with_name(f"{bp.stem}.{name}") if bp is not None else None


Factory = Callable[[Any, SourceContext], "Source"]


@dataclass(frozen=True, slots=True)
class Connector:
    type: str  # the `type:` value in a config file
    config: str  # "module:Class" of the pydantic model
    factory: str  # "module:function" taking (cfg, SourceContext)
    order: int = 100

    def config_model(self) -> builtins.type[BaseModel]:
        obj = _resolve(self.config)
        assert isinstance(obj, type), self.config
        return obj

    def build(self, cfg: Any, ctx: SourceContext) -> Source:
        factory: Factory = _resolve(self.factory)
        return factory(cfg, ctx)


def _resolve(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


_registered: dict[str, Connector] = {}
_discovered = False


def register(connector: Connector) -> None:
    """Add a connector (before the first config is validated: the source union is built once)."""
    old = _registered.get(connector.type)
    if old is not None and old != connector:
        raise ValueError(f"connector type {connector.type!r} is registered twice ({old.config}, {connector.config})")
    _registered[connector.type] = connector


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    import plantstream.edge as edge_pkg

    for info in pkgutil.iter_modules(edge_pkg.__path__):
        if not info.ispkg or info.name == "tests":
            continue
        name = f"{edge_pkg.__name__}.{info.name}.connector"
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            continue
        if spec is None:
            continue
        connector = getattr(importlib.import_module(name), "CONNECTOR", None)
        if isinstance(connector, Connector):
            register(connector)


def connectors() -> list[Connector]:
    """Every known connector, in ``order``."""
    _discover()
    return sorted(_registered.values(), key=lambda c: (c.order, c.type))


def connector(type_: str) -> Connector:
    _discover()
    try:
        return _registered[type_]
    except KeyError:
        raise KeyError(f"no connector registered for source type {type_!r}") from None


__all__ = ["Connector", "Factory", "SourceContext", "connector", "connectors", "register"]
