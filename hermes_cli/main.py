"""The ``hermes`` Typer app. Commands live one per module in ``hermes_cli.commands``.

No torch import at module level anywhere in ``hermes_cli``: ``hermes --help`` must stay fast.
"""

from __future__ import annotations

import typer

from hermes_cli.commands import evaluate, info, segment, tasks, train, weights

app = typer.Typer(
    name="hermes",
    help=(
        "Hermes: universal 3D medical image segmentation. One model, many organs and tumours, "
        "CT and MR. Run `hermes COMMAND --help` for details."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode="rich",
)

app.command("tasks")(tasks.tasks_command)
app.command("info")(info.info_command)
app.command("segment")(segment.segment_command)
app.add_typer(weights.app, name="weights")
app.command("train")(train.train_command)
app.command("finetune")(train.finetune_command)
app.command("incremental")(train.incremental_command)
app.command("evaluate")(evaluate.evaluate_command)


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
