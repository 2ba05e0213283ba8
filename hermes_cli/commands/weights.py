"""``hermes weights``: list, download, verify and locate the checkpoints of the registry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.box import SIMPLE_HEAD
from rich.table import Table

from hermes_cli._common import DebugOption, err, fail, handle_errors, out
from hermes_cli.commands import weights_import
from hermes_model.errors import WeightsError
from hermes_model.weights import hub

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
            caption=f"* the default (used without --weights)\nmanual: fetched by hand; 'hermes "
            "weights download NAME' says where, 'hermes weights import FILE --name NAME' adds it\n"
            f"{base}: {hub.registry_path()}\n"
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
                "manual" if entry.manual else "yes" if hub.local_copy(entry) is not None else "no",
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
    """Download weights into the Hugging Face cache and check their sha256; print the path.
    For weights that cannot be downloaded automatically (source manual), say where to get
    them and how to import them (exit 5)."""
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


CheckpointArgument = Annotated[
    Path,
    typer.Argument(
        help="A Hermes .safetensors checkpoint (hermes train writes runs/NAME/best.safetensors).",
        dir_okay=False,
    ),
]
EvalOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--eval",
        help="A 'hermes evaluate --json' report of these weights: its per-task Dice, surface "
        "Dice and HD95, and the definitions of those metrics, go into the card. Repeat it for "
        "weights evaluated on several datasets (one report each). Default: none (the card "
        "shows only the validation scores recorded in the checkpoint).",
        dir_okay=False,
    ),
]


@app.command("card")
def card_command(
    checkpoint: CheckpointArgument,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Write the card here (e.g. README.md). Default: print it to stdout.",
            dir_okay=False,
        ),
    ] = None,
    evaluation: EvalOption = None,
    repo: Annotated[
        str | None,
        typer.Option(help="ORG/NAME the card's usage lines point at. Default: ORG/REPO."),
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Write a Hugging Face model card from the checkpoint's own metadata: licence and tags,
    task table, architecture, preprocessing, training provenance, evaluation, usage."""
    from hermes_model.weights.card import model_card, write_card

    with handle_errors(debug):
        if output is None:
            typer.echo(model_card(checkpoint, evaluation=evaluation, repo_id=repo), nl=False)
            return
        write_card(checkpoint, output, evaluation=evaluation, repo_id=repo)
        err.print(f"wrote {output}", highlight=False)


RepoOption = Annotated[
    str, typer.Option(help="Hugging Face model repository ORG/NAME; created if it does not exist.")
]
PrivateOption = Annotated[
    bool,
    typer.Option(
        "--private",
        help="Create the repository private (default: public). An existing repository keeps its "
        "visibility.",
    ),
]
NameOption = Annotated[
    str | None,
    typer.Option(
        help="Also record the entry under this name in your personal registry, so that "
        "'--weights NAME' works. Default: not recorded (the table is only printed).",
    ),
]
ReplaceOption = Annotated[
    bool,
    typer.Option(
        "--replace",
        help="Let --name overwrite a personal entry or shadow a packaged one (default: a taken "
        "name is refused before anything is uploaded).",
    ),
]
FilenameOption = Annotated[
    str | None,
    typer.Option(help="Path of the file in the repository. Default: <repo name>.safetensors."),
]


@app.command("publish")
def publish_command(
    checkpoint: CheckpointArgument,
    repo: RepoOption,
    private: PrivateOption = False,
    evaluation: EvalOption = None,
    name: NameOption = None,
    replace: ReplaceOption = False,
    filename: FilenameOption = None,
    debug: DebugOption = False,
) -> None:
    """Upload a checkpoint and its model card to the Hugging Face Hub in one commit, and print
    the pinned \\[weights.NAME] table (commit, sha256, tasks, licence). The token comes from
    HF_TOKEN or 'hf auth login'; a failure half-way publishes nothing."""
    from hermes_model.weights.publish import publish

    with handle_errors(debug):
        done = publish(
            checkpoint, repo, private=private, evaluation=evaluation, name=name,
            replace=replace, filename=filename,
        )  # fmt: skip
        err.print(f"published {done.uri}\n{done.commit_url}", highlight=False, soft_wrap=True)
        if done.registry is not None:
            err.print(f"recorded as '{done.name}' in {done.registry}", highlight=False)
        typer.echo(done.toml(), nl=False)


# The authors' checkpoints (paper parity): its own module, registered here.
app.command("import")(weights_import.import_command)
