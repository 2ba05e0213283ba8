"""DistributedDataParallel on the CPU: two gloo processes launched the way torchrun does it
(RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* in the environment) end with identical weights."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from toy_data import MR_TASKS, write_dataset, write_recipe

WORLD = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_main(rank: int, recipe_path: str, output: str, port: int) -> None:
    """One process of the job: what ``torchrun --nproc-per-node 2 hermes train`` starts."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    from hermes_model.training.loop import train
    from hermes_model.training.recipe import load_recipe

    result = train(load_recipe(recipe_path), output, progress=False)
    weights = {k: v.contiguous() for k, v in result.model.state_dict().items()}
    save_file(weights, str(Path(output) / f"rank{rank}.safetensors"))


@pytest.mark.timeout(300)
def test_two_gloo_processes_end_with_identical_weights(tmp_path: Path) -> None:
    card = write_dataset(tmp_path, "toymr", MR_TASKS, cases=4)
    recipe = write_recipe(
        tmp_path, [card], tmp_path / "cache", train={"iterations": 3, "batch_size": 4}
    )
    out = tmp_path / "run"
    mp.spawn(_rank_main, args=(str(recipe), str(out), _free_port()), nprocs=WORLD, join=True)

    ranks = [load_file(str(out / f"rank{r}.safetensors")) for r in range(WORLD)]
    assert ranks[0].keys() == ranks[1].keys()
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    # The ranks trained (DDP broadcast + averaged gradients), not merely started equal.
    from hermes_model.training.recipe import load_recipe

    torch.manual_seed(load_recipe(recipe).seed)
    from hermes_model import create_model

    init = create_model("tiny", tasks=list(MR_TASKS.values())).state_dict()
    assert any(not torch.equal(init[k], ranks[0][k]) for k in init)
    # Rank 0 alone wrote the files; the state holds both ranks' generators.
    assert (out / "last.safetensors").is_file() and (out / "curves.png").is_file()
    with safe_open(str(out / "state.safetensors"), framework="pt") as handle:
        assert {"rng/packed/0", "rng/packed/1"} <= set(handle.keys())
    state = json.loads((out / "state.json").read_text())
    assert state["world_size"] == WORLD and state["sampler"]["position"] == 6  # 3 x 2 per rank
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if r["kind"] == "train"] == [1, 2, 3]
