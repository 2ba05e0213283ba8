"""Segmenting with OpenVINO and then training with DataLoader workers, in one process (a
notebook's order).

Each ``openvino.Core`` used to bring its own CPU plugin, which swaps the calling thread's signal
stack for one of its own and unmaps it when released; two of them released in the order they were
made left the main thread on an unmapped signal stack, and the next Python signal handler (the
DataLoader's SIGCHLD at a worker's or ``git``'s exit) died with SIGSEGV. Hermes now keeps one Core
per process (``engines.openvino``).
"""

from __future__ import annotations

import gc
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import signal_stack_is_usable, write_ct
from toy_data import MR_TASKS, train_losses, write_dataset, write_recipe

from hermes_model import Segmenter, create_model, save_checkpoint
from hermes_model.config import PreprocessConfig
from hermes_model.engines import INSTALL_HINT, openvino_available
from hermes_model.training.loop import train
from hermes_model.training.recipe import load_recipe

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.workers,
    pytest.mark.skipif(
        not openvino_available(), reason=f"OpenVINO is not installed ({INSTALL_HINT})"
    ),
]


@pytest.fixture(scope="module")
def plain_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain tiny ResUNet at 16 mm: OpenVINO converts it in about half the time of ``tiny``."""
    torch.manual_seed(0)
    model = create_model("resunet-tiny", tasks=["amos/liver", "amos/spleen"])
    return save_checkpoint(
        model,
        tmp_path_factory.mktemp("plain-weights") / "plain.safetensors",
        preprocess=PreprocessConfig(spacing=(16.0, 16.0, 16.0), patch_size=(32, 32, 32)),
    )


def test_training_with_worker_processes_after_segmenting_with_openvino(
    plain_weights: Path, tmp_path: Path
) -> None:
    scan = write_ct(tmp_path / "ct.nii.gz")
    segmenters = []
    for _ in range(2):  # two Segmenters (say, two settings compared), dropped in the order made
        segmenter = Segmenter(plain_weights, device="cpu", engine="openvino", precision="fp32")
        result = segmenter.segment(scan, tasks=["amos/liver"])
        assert segmenter.runtime["engine"] == "openvino"
        assert result.task_ids == ["amos/liver"] and result.masks.shape == (1, 24, 28, 20)
        segmenters.append(segmenter)
    compile_log = segmenters[1].engine.compile_log  # type: ignore[attr-defined]
    assert [log["cached"] for log in compile_log] == [True]  # converted once, compiled twice
    del segmenter, result
    while segmenters:
        segmenters.pop(0)
        gc.collect()
    if sys.platform == "linux":  # the check reads /proc/self/maps
        assert signal_stack_is_usable(), "OpenVINO left this thread an unmapped signal stack"

    card = write_dataset(tmp_path, "toymr", MR_TASKS, cases=3)
    settings = {"iterations": 3, "batch_size": 2, "num_workers": 2}
    recipe = load_recipe(write_recipe(tmp_path, [card], tmp_path / "cache", train=settings))
    trained = train(recipe, tmp_path / "run", progress=False)
    assert (trained.iterations, trained.completed) == (3, True)
    losses = train_losses(tmp_path / "run")
    assert sorted(losses) == [1, 2, 3] and all(math.isfinite(v) for v in losses.values())
    assert (tmp_path / "run" / "last.safetensors").is_file()
