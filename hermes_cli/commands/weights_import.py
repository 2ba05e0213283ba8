"""``hermes weights import``: the authors' Hermes-R checkpoint (.pth) as Hermes safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hermes_cli._common import DebugOption, err, handle_errors


def import_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="The authors' checkpoint (.pth): their released Hermes-R file or a train.py "
            "latest.pth/best.pth. Read with torch.load(weights_only=True): tensors only."
        ),
    ],
    output: Annotated[
        Path,
        typer.Option("-o", "--output", help="Where to write the converted .safetensors file."),
    ],
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Also record the file under this name in your personal registry, so that "
            "'--weights NAME' works from then on (default: not recorded).",
        ),
    ] = None,
    use_model_weights: Annotated[
        bool,
        typer.Option(
            "--use-model-weights",
            help="From a train.py checkpoint take 'model_state_dict' instead of the EMA weights "
            "(default: 'ema_model_state_dict', which their validation and test use).",
        ),
    ] = False,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace", help="Let --name overwrite an entry of that name (default: off)."
        ),
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Convert the authors' Hermes-R weights (yhygao/universal-medical-image-segmentation) to a
    Hermes checkpoint: 71 tasks under Hermes task ids, their 6 modality rows, their
    preprocessing (1.5 mm, CT [-991, 500], z-score, 128^3 windows). Their modality classifier
    head (mod_out) is dropped; it plays no part in segmentation."""
    from hermes_model.weights.authors import import_authors_checkpoint, register

    with handle_errors(debug):
        if output.suffix != ".safetensors":
            from hermes_model.errors import WeightsError

            raise WeightsError(f"{output}: the output must end in .safetensors; name it so")
        done = import_authors_checkpoint(
            source, output, name=name, use_model_weights=use_model_weights
        )
        err.print(
            f"converted {source.name} ({done.weights}, width {done.base_channels}, "
            f"{done.parameters:,} parameters; dropped {len(done.dropped)} mod_out tensors)",
            highlight=False,
        )
        if name is not None:
            registry = register(done, name, replace=replace)
            err.print(f"recorded as '{name}' in {registry}", highlight=False)
        typer.echo(f"{done.path}\tsha256 {done.sha256}")
