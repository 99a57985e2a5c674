"""What every `engramma` command module shares: the Typer app they register on, the common arguments and the
JSON printer. `cli` and `cli_updater` both import this module, and neither imports the other's commands back."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="engramma: a memory that learns, for long-running agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

Store = Annotated[Path, typer.Argument(help="Store folder (created by `init` or the first write).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for machines instead of a table.")]


def print_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))
