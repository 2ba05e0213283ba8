"""``hermes weights``: list, download, verify and locate the checkpoints of the registry."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.box import SIMPLE_HEAD
from rich.table import Table

from hermes_cli._common import DebugOption, err, fail, handle_errors, out
from hermes_model import hub
from hermes_model.errors import WeightsError

app = typer.Typer(
    help="The weights registry (the packaged weights.toml or $HERMES_WEIGHTS_TOML, with your "
    "personal weights.toml merged over it): list, download, verify and locate checkpoints; write "
    "model cards and publish your own. Downloads go to the Hugging Face cache (HF_HOME).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

NameArgument = Annotated[
    str, typer.Argument(help="A registry name (hermes weights list) or hf://ORG/REPO@COMMIT/FILE.")
]


@app.command("list")
def list_command(debug: DebugOption = False) -> None:
    """Show the registry: name (* the default), source, task count, licence, whether it is on
    this machine, and where it comes from (packaged, personal, env = $HERMES_WEIGHTS_TOML)."""
    with handle_errors(debug):
        entries = hub.list_weights()
        personal = hub.personal_registry_path()
        base = "env: $HERMES_WEIGHTS_TOML" if os.environ.get(hub.REGISTRY_ENV) else "packaged"
        table = Table(
            title=f"{len(entries)} weights",
            caption=f"* the default (used without --weights)\n{base}: {hub.registry_path()}\n"
            f"personal: {personal}" + ("" if personal.is_file() else " (none yet)"),
            caption_justify="left",
            box=SIMPLE_HEAD,
        )
        for column in ("name", "source", "tasks", "licence", "cached", "from"):
            table.add_column(
                column, no_wrap=column != "licence", style="bold" if column == "name" else None
            )
        for entry in entries:
            table.add_row(
                entry.name + (" *" if entry.default else ""),
                entry.source,
                str(len(entry.tasks)),
                entry.licence or "-",
                "yes" if hub.local_copy(entry) is not None else "no",
                "env" if entry.origin == hub.REGISTRY_ENV else entry.origin,
            )
        out.print(table)


@app.command("download")
def download_command(
    name: NameArgument,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Download again even if cached: the fix for a sha256 mismatch (default: off, "
            "a cached file is reused without network access).",
        ),
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Download weights into the Hugging Face cache and check their sha256; print the path."""
    with handle_errors(debug):
        resolved = hub.download(name, force=force)
        err.print(f"{resolved.name}: sha256 {resolved.sha256}", highlight=False)
        typer.echo(str(resolved.path))


@app.command("verify")
def verify_command(
    target: Annotated[
        str,
        typer.Argument(help="A registry name (checks its local copy) or a .safetensors path."),
    ],
    debug: DebugOption = False,
) -> None:
    """Compare a checkpoint's sha256 with the registry: exit 0 when it matches, 5 when not."""
    with handle_errors(debug):
        ok, expected, actual = hub.verify(target)
        if not ok:
            fail(
                f"{target}: sha256 mismatch (expected {expected}, got {actual}); the file is "
                "corrupt or not the published one: download it again (--force)",
                WeightsError.exit_code,
            )
        typer.echo(f"ok {target} sha256 {actual}")


@app.command("path")
def path_command(
    name: Annotated[str, typer.Argument(help="A registry name (hermes weights list).")],
    debug: DebugOption = False,
) -> None:
    """Print the local file of downloaded (or packaged) registry weights."""
    with handle_errors(debug):
        typer.echo(str(hub.weights_path(name)))
