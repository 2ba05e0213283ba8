"""``hermes tasks``: the task registry as a table or JSON."""

from __future__ import annotations

import enum
from typing import Annotated, Any

import typer
from rich.box import SIMPLE_HEAD
from rich.table import Table

from hermes_cli._common import DebugOption, handle_errors, out
from hermes_model import tasks

# Choices come from the registry, so a new modality shows up here without CLI changes (mypy
# cannot see members of an Enum built from a non-literal; nothing here needs them statically).
Modality = enum.Enum("Modality", {m.upper(): m for m in tasks.MODALITIES}, type=str)  # type: ignore[misc]

_DATASET_NAMES = ", ".join(d.name for d in tasks.all_datasets())


def tasks_command(
    modality: Annotated[
        Modality | None,
        typer.Option(
            "--modality",
            "-m",
            case_sensitive=False,
            help="Only tasks with training data in this modality (default: all modalities).",
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            "-d",
            help=f"Only this dataset's task group, in label order ({_DATASET_NAMES}), or a task "
            "namespace such as 'amos' (default: all datasets).",
        ),
    ] = None,
    aliases: Annotated[
        bool,
        typer.Option(
            "--aliases",
            help="List aliases and the task each one picks per modality instead of tasks "
            "(default: off).",
        ),
    ] = False,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json", help="Print machine-readable JSON instead of a table (default: off)."
        ),
    ] = False,
    debug: DebugOption = False,
) -> None:
    """List the tasks Hermes knows: ids, datasets, modalities, kinds, aliases, and the
    registered weights that segment each."""
    with handle_errors(debug):
        wanted = modality.value if modality is not None else None
        if aliases:
            table = {
                name: targets
                for name, targets in tasks.aliases().items()
                if wanted is None or wanted in targets
            }
            if json_out:
                out.print_json(data=table)
                return
            _print_aliases(table)
            return
        from hermes_model.weights.routing import providers

        records = tasks.task_records(dataset, wanted)
        having = providers()
        for record in records:
            record["weights"] = [{"name": n, "state": s} for n, s in having.get(record["id"], [])]
        if json_out:
            out.print_json(data=records)
            return
        _print_tasks(records)


def _print_tasks(records: list[dict[str, Any]]) -> None:
    # Below ~110 columns the display name is dropped: the id already names the structure.
    columns = ["id", "name", "dataset(s)", "modality", "kind", "aliases", "weights"]
    if out.width < 110:
        columns.remove("name")
    table = Table(
        title=f"{len(records)} tasks",
        caption=_CAPTION,
        caption_justify="left",
        box=SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in columns:
        wrap = column in ("name", "dataset(s)", "aliases", "weights")
        table.add_column(
            column,
            no_wrap=not wrap,
            overflow="fold" if wrap else "ellipsis",
            style="bold" if column == "id" else None,
        )
    for record in records:
        cells = {
            "id": record["id"],
            "name": record["name"],
            "dataset(s)": ", ".join(record["datasets"]),
            "modality": " ".join(record["modalities"]),
            "kind": record["kind"],
            "aliases": ", ".join(record["aliases"]),
            "weights": ", ".join(f"{w['name']} ({w['state']})" for w in record["weights"]) or "-",
        }
        table.add_row(*(str(cells[c]) for c in columns))
    out.print(table)


def _print_aliases(table_data: dict[str, dict[str, str]]) -> None:
    table = Table(title=f"{len(table_data)} aliases", box=SIMPLE_HEAD)
    table.add_column("alias", style="bold", no_wrap=True)
    for family in tasks.FAMILIES:
        table.add_column(f"{family.upper()} task", no_wrap=True)
    for name, targets in table_data.items():
        table.add_row(name, *(targets.get(m, "-") for m in tasks.FAMILIES))
    out.print(table)


_CAPTION = (
    "Ids are dataset/label and case-insensitive; an alias picks a task per modality "
    "(hermes tasks --aliases). The paper's 7 upstream datasets give 42 tasks; the authors' "
    "released weights have 71. Modality rows of the model: "
    + ", ".join(tasks.MODALITIES)
    + " (mr: MR of unknown sequence, what detection gives; name a row with --modality). "
    "weights: the registered weights that segment a task: installed, downloadable (hermes "
    "weights download NAME) or manual (hermes weights download NAME says where to get them)."
)
