"""The ``plantstream`` console script. Each stage owns its subcommands in ``<stage>/cli.py``;
this module only mounts them, so ``plantstream --help`` lists the whole data flow."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from plantstream import log
from plantstream.config import ConfigError
from plantstream.domain.pullrequest import PullEngine

# (command name, module, attribute) - imported lazily so `plantstream stack up` starts fast
# and a broken optional stage never takes the whole CLI down.
MOUNTS: list[tuple[str, str, str]] = [
    ("stack", "plantstream.stackcli", "stack"),
    ("topics", "plantstream.stackcli", "topics"),
    ("demo", "plantstream.demo", "demo"),
    ("sim", "plantstream.sim.cli", "sim"),
    ("edge", "plantstream.edge.cli", "edge"),
    ("streams", "plantstream.streams.cli", "streams"),
    ("sink", "plantstream.sinks.cli", "sink"),
    ("db", "plantstream.sinks.cli", "db"),
    ("dataset", "plantstream.datasets.cli", "dataset"),
    ("monitor", "plantstream.monitor.cli", "monitor"),
    ("platform", "plantstream.federation.cli", "platform"),
    ("bench", "plantstream.bench.cli", "bench"),
    ("audit", "plantstream.auditcli", "audit_group"),
    ("config-docs", "plantstream.configdocs", "config_docs"),
]


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, mod, attr in MOUNTS if self._load(name) is not None)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        # Stages load on first use (start-up stays fast); an ImportError is a broken stage and
        # propagates: hiding it would hide the command too.
        for n, mod, attr in MOUNTS:
            if n == name:
                cmd = getattr(importlib.import_module(mod), attr)
                assert isinstance(cmd, click.Command)
                return cmd
        return None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING (env PLANTSTREAM_LOG_LEVEL)")
@click.option("--log-format", type=click.Choice(["json", "text"]), default=None, help="env PLANTSTREAM_LOG_FORMAT")
@click.pass_context
def cli(ctx: click.Context, log_level: str | None, log_format: str | None) -> None:
    """plantstream: factory sensor data from edge to dataset.

    Data flow: sim -> edge -> Kafka (producers) -> streams -> sinks -> datasets/monitor.
    """
    log.setup(log_level, log_format)
    # Wiring between sibling stages happens here, above them: the monitor serves pulls with the
    # datasets stage's engine (a factory, so commands that do not pull never import pyarrow).
    ctx.ensure_object(dict)["pull_engine"] = _pull_engine


def _pull_engine() -> PullEngine:
    from plantstream.datasets.api import ENGINE

    return ENGINE


def main(argv: list[str] | None = None) -> Any:
    try:
        return cli.main(args=argv, prog_name="plantstream", standalone_mode=True)
    except ConfigError as exc:
        click.echo(f"plantstream: configuration error:\n{exc}", err=True)
        sys.exit(ConfigError.exit_code)


if __name__ == "__main__":
    main()
