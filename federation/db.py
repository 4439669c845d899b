"""The platform's connection pool: synchronous psycopg functions run off the event loop."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

P = ParamSpec("P")
R = TypeVar("R")


class Db:
    def __init__(self, dsn: str, size: int = 8) -> None:
        self.pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            dsn, min_size=1, max_size=size, kwargs={"autocommit": True}, open=False
        )

    def open(self, wait: bool = True, timeout: float = 30.0) -> None:
        self.pool.open(wait=wait, timeout=timeout)

    def close(self) -> None:
        self.pool.close()

    def call(self, fn: Callable[Concatenate[psycopg.Connection[Any], P], R], *args: P.args, **kw: P.kwargs) -> R:
        with self.pool.connection() as conn:
            return fn(conn, *args, **kw)

    async def run(self, fn: Callable[Concatenate[psycopg.Connection[Any], P], R], *args: P.args, **kw: P.kwargs) -> R:
        return await asyncio.to_thread(functools.partial(self.call, fn, *args, **kw))
