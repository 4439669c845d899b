"""The Python API of datasets, for the HTTP monitor and notebooks.

``pull_dataset(request, requester)`` takes an already validated ``PullRequest`` (build one with
``validate_request(dict)``, which raises ``RequestError`` naming the field) and a ``Requester``
(name + tier from their token) and returns the ``PullRecord`` stored in ``dataset_pulls``.
It raises ``RequestError`` (client error: HTTP 400/422) before anything is written, and any
other exception for server-side failures (recorded as 'failed').
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from plantstream.config import Settings
from plantstream.datasets.pull import Plan, get_pull, list_pulls, pull
from plantstream.domain.pullrequest import (
    Progress,
    ProgressFn,
    PullCancelled,
    PullEngine,
    PullRecord,
    PullRequest,
    Requester,
    RequestError,
    validate_request,
)


def pull_dataset(
    request: PullRequest,
    requester: Requester,
    out: Path | None = None,
    settings: Settings | None = None,
    progress: ProgressFn | None = None,
    *,
    out_root: Path | None = None,
    on_begin: Callable[[int], None] | None = None,
    on_resolved: Callable[[Plan], None] | None = None,
    cancel: threading.Event | None = None,
    application_name: str = "plantstream-dataset",
) -> PullRecord:
    """Pull ``request`` as ``requester`` into ``out`` (default ``out_root/<pull id>``, else
    ``./dataset-<snapshot>``). The hooks and ``cancel`` are those of ``pull.pull``."""
    s = settings or Settings.from_env()
    return pull(
        s.dsn,
        request,
        requester,
        out=out,
        progress=progress,
        application_name=application_name,
        out_root=out_root,
        on_begin=on_begin,
        on_resolved=on_resolved,
        cancel=cancel,
    )


class DatasetsEngine:
    """The datasets stage as the monitor's ``PullEngine`` (handed over by the console entry point)."""

    def run(
        self,
        request: PullRequest,
        requester: Requester,
        *,
        dsn: str,
        out_root: Path,
        progress: ProgressFn | None,
        on_begin: Callable[[int], None] | None,
        on_resolved: Callable[[Plan], None] | None,
        cancel: threading.Event | None,
        application_name: str,
    ) -> PullRecord:
        return pull(
            dsn,
            request,
            requester,
            progress=progress,
            application_name=application_name,
            out_root=out_root,
            on_begin=on_begin,
            on_resolved=on_resolved,
            cancel=cancel,
        )

    def record(self, dsn: str, pull_id: int) -> PullRecord | None:
        return get_pull(dsn, pull_id)


ENGINE: PullEngine = DatasetsEngine()


def list_dataset_pulls(
    settings: Settings | None = None, limit: int = 50, requester: str | None = None
) -> list[PullRecord]:
    s = settings or Settings.from_env()
    return list_pulls(s.dsn, limit=limit, requester=requester)


def show_dataset_pull(ident: int | str, settings: Settings | None = None) -> PullRecord | None:
    s = settings or Settings.from_env()
    return get_pull(s.dsn, ident)


__all__ = [
    "ENGINE",
    "DatasetsEngine",
    "Plan",
    "Progress",
    "PullCancelled",
    "PullRecord",
    "PullRequest",
    "RequestError",
    "Requester",
    "list_dataset_pulls",
    "pull_dataset",
    "show_dataset_pull",
    "validate_request",
]
