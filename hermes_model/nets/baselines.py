"""Universal-segmentation baselines on the ResUNet backbone (paper §4.2, Table 7).

All three keep the networks' forward contract (``image (B, 1, D, H, W)``, ``task_idx (B, T)``
with -1 padding, ``modality_idx (B,)`` → logits ``(B, T, D, H, W)``, zeros in padded slots).

- ``MultiDecoderR`` (Chen et al., Med3D-style): one shared encoder, one ResUNet decoder per task
  group. The group of a task is its namespace, the ``dataset`` part of ``dataset/label``
  (``Task.dataset``): AMOS CT and AMOS MR share their tasks and so one decoder; the paper's 7
  upstream datasets give 6 decoders. All tasks of one sample must come from one group (as in
  training, where a sample carries its dataset's task set); a mixed sample is a ValueError.
- ``DoDNetR`` (Zhang et al., 2021): a task-agnostic decoder; a controller turns globally pooled
  bottleneck features plus a one-hot task code into the weights of a small per-task dynamic
  head (three 1³ conv layers, 8-8-1 channels). The one-hot code's controller weights are
  stored as a per-task table (``task_code``), which is the same map and grows with add_tasks.
- ``ClipDrivenR`` (Liu et al., 2023): as DoDNet, but the task code is a fixed text embedding of
  "A computerized tomography of a {class}" / "A magnetic resonance image of a {class}" (the
  sample's modality picks the prompt). CLIP's text encoder cannot be downloaded here, so the
  prompts are embedded by all-MiniLM-L6-v2 (``scripts/embed_task_prompts.py``) into a table that
  ships with the package (``TEXT_EMBEDDINGS``). The embeddings are buffers, saved in checkpoints.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hermes_model.config import ModelConfig
from hermes_model.errors import TaskError, WeightsError
from hermes_model.nets.heads import TaskHead, uniform, valid_mask
from hermes_model.nets.hermes import SegmentationNet
from hermes_model.nets.resunet import ResUNetDecoder, ResUNetEncoder

__all__ = [
    "MultiDecoderR",
    "DoDNetR",
    "ClipDrivenR",
    "DynamicHead",
    "TEXT_EMBEDDINGS",
    "load_text_embeddings",
    "task_group",
]

#: The shipped prompt-embedding table (written by scripts/embed_task_prompts.py).
TEXT_EMBEDDINGS = (
    Path(__file__).resolve().parents[1] / "assets" / "task_text_embeddings.safetensors"
)
_REBUILD = (
    "run 'python scripts/embed_task_prompts.py' (pip install 'hermes-seg[prompts]') to rebuild it"
)


def task_group(task_id: str) -> str:
    """``MultiDecoderR``'s decoder group of a task: its namespace (``amos/liver`` → ``amos``)."""
    return task_id.split("/", 1)[0]


def _decode(decoder: ResUNetDecoder, feats: list[torch.Tensor]) -> torch.Tensor:
    x = feats[4]
    for i, up in enumerate(decoder.ups):
        x = up(x, feats[3 - i])
    return x


class MultiDecoderR(SegmentationNet):
    """Shared ResUNet encoder, one decoder per task group, one chunked 1³ head row per task."""

    def __init__(self, config: ModelConfig, task_ids: Sequence[str], modalities: Sequence[str]):
        super().__init__(config, task_ids, modalities)
        self.encoder = ResUNetEncoder(config)
        #: Group names in decoder order (first appearance in ``task_ids``).
        self.groups: list[str] = list(dict.fromkeys(task_group(t) for t in task_ids))
        self.decoders = nn.ModuleList(ResUNetDecoder(config) for _ in self.groups)
        #: Decoders created by each task chunk (the first chunk creates the initial ones).
        self.decoder_chunks: list[int] = [len(self.groups)]
        self.head = TaskHead(config.channels(0), len(task_ids))

    def add_tasks(self, task_ids: Sequence[str], seed: int = 0) -> None:
        """Grow the task list; a task of a new group also gets a new decoder (drawn with
        ``seed``). Existing parameters stay bit-identical."""
        new = [t for t in dict.fromkeys(task_ids) if t not in self.task_ids]
        if not new:
            return
        fresh = [g for g in dict.fromkeys(task_group(t) for t in new) if g not in self.groups]
        device = self.head.weight[0].device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _ in fresh:
                self.decoders.append(ResUNetDecoder(self.config).to(device))
        self.groups.extend(fresh)
        self.decoder_chunks.append(len(fresh))
        super().add_tasks(new, seed)

    def _grow(self, n: int, generator: torch.Generator) -> None:
        self.head.grow(n, generator)

    def new_task_parameters(self) -> list[nn.Parameter]:
        fresh = self.decoders[len(self.decoders) - self.decoder_chunks[-1] :]
        return [*self.head.new_parameters(), *fresh.parameters()]

    def sample_groups(self, task_idx: torch.Tensor) -> list[int | None]:
        """Decoder index of each sample (None: no valid task); ValueError for a mixed sample."""
        out: list[int | None] = []
        index = {g: i for i, g in enumerate(self.groups)}
        for row in task_idx.tolist():
            groups = {task_group(self.task_ids[t]) for t in row if t >= 0}
            if len(groups) > 1:
                raise ValueError(
                    f"a sample mixes tasks of the groups {sorted(groups)}; multi-decoder-r "
                    "segments one group (dataset namespace) per sample: split the request"
                )
            out.append(index[groups.pop()] if groups else None)
        return out

    def forward(
        self, image: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor
    ) -> torch.Tensor:
        self._check_inputs(image, task_idx, modality_idx)
        feats = self.encoder(image)
        logits = image.new_zeros(*task_idx.shape, *image.shape[2:])
        groups = self.sample_groups(task_idx)
        for g in sorted({g for g in groups if g is not None}):
            rows = torch.tensor([i for i, h in enumerate(groups) if h == g], device=image.device)
            x = _decode(self.decoders[g], [f[rows] for f in feats])  # type: ignore[arg-type]
            out = self.head(x, task_idx[rows])
            logits = logits.index_put((rows,), out.to(logits.dtype))
        return logits


#: Dynamic head widths (DoDNet, CLIP-driven): 8 input channels, 8 hidden, 1 output.
_WIDTH = 8
_DYNAMIC_SHAPES = ((_WIDTH, _WIDTH), (_WIDTH,), (_WIDTH, _WIDTH), (_WIDTH,), (1, _WIDTH), (1,))
DYNAMIC_PARAMS = sum(math.prod(s) for s in _DYNAMIC_SHAPES)  # 153


class DynamicHead(nn.Module):
    """Features ``(B, C, D, H, W)`` → IN, ReLU, 1³ conv to 8 channels → per-task three-layer
    1³ conv net (8 → 8 → 8 → 1, ReLU between) whose weights are ``params (B, T, 153)``
    → logits ``(B, T, D, H, W)``."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.pre = nn.Sequential(
            nn.InstanceNorm3d(in_ch, eps=1e-4), nn.ReLU(), nn.Conv3d(in_ch, _WIDTH, 1)
        )

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        b, t = params.shape[:2]
        w1, b1, w2, b2, w3, b3 = (
            p.reshape(b, t, *s).to(x.dtype)
            for p, s in zip(
                params.split([math.prod(s) for s in _DYNAMIC_SHAPES], -1),
                _DYNAMIC_SHAPES,
                strict=True,
            )
        )
        h = self.pre(x)
        y = torch.einsum("btoc,bcdhw->btodhw", w1, h) + b1[..., None, None, None]
        y = torch.einsum("btoc,btcdhw->btodhw", w2, F.relu(y)) + b2[..., None, None, None]
        y = torch.einsum("btoc,btcdhw->btodhw", w3, F.relu(y)) + b3[..., None, None, None]
        return y[:, :, 0]


def _pool_norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(16, ch), ch)


class DoDNetR(SegmentationNet):
    """ResUNet + DoDNet's dynamic head: params = controller([GAP(bottleneck), onehot(task)])."""

    def __init__(self, config: ModelConfig, task_ids: Sequence[str], modalities: Sequence[str]):
        super().__init__(config, task_ids, modalities)
        self.encoder = ResUNetEncoder(config)
        self.decoder = ResUNetDecoder(config)
        c4 = config.channels(4)
        self.pool_norm = _pool_norm(c4)
        self.controller = nn.Linear(c4, DYNAMIC_PARAMS)
        self._bound = (c4 + len(task_ids)) ** -0.5  # nn.Linear's init for the one-hot columns
        self.task_code = nn.ParameterList(
            [nn.Parameter(uniform((len(task_ids), DYNAMIC_PARAMS), self._bound))]
        )
        self.head = DynamicHead(config.channels(0))

    def _grow(self, n: int, generator: torch.Generator) -> None:
        device = self.task_code[0].device
        self.task_code.append(
            nn.Parameter(uniform((n, DYNAMIC_PARAMS), self._bound, generator, device))
        )

    def new_task_parameters(self) -> list[nn.Parameter]:
        return [self.task_code[-1]]

    def forward(
        self, image: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor
    ) -> torch.Tensor:
        self._check_inputs(image, task_idx, modality_idx)
        feats = self.encoder(image)
        pooled = F.relu(self.pool_norm(feats[4])).mean(dim=(2, 3, 4))  # (B, C4)
        code = torch.cat(list(self.task_code))[task_idx.clamp(min=0)]  # (B, T, P)
        params = self.controller(pooled)[:, None] + code
        logits = self.head(_decode(self.decoder, feats), params)
        return logits * valid_mask(task_idx, logits)


def load_text_embeddings(
    task_ids: Sequence[str], modalities: Sequence[str], path: Path = TEXT_EMBEDDINGS
) -> torch.Tensor:
    """Rows of the prompt-embedding table: ``(len(task_ids), len(modalities), E)`` float32.

    A task or modality the table lacks gets NaN rows; using such a task is a TaskError (see
    ``ClipDrivenR``). A missing or unreadable table is a WeightsError.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            table = {m: handle.get_tensor(m) for m in handle.keys()}  # noqa: SIM118
        known = {t: i for i, t in enumerate(json.loads(meta["task_ids"]))}
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as error:
        raise WeightsError(
            f"{path}: the task text-embedding table is missing or broken ({error}); {_REBUILD}"
        ) from error
    dim = next(iter(table.values())).shape[1]
    out = torch.full((len(task_ids), len(modalities), dim), float("nan"))
    from hermes_model.tasks import modality_family

    for j, modality in enumerate(modalities):
        # An MR sequence row (mr-t2, mr-cine...) uses the MR prompt; PET has none.
        source = modality if modality in table else modality_family(modality)
        if source in table:
            for i, task in enumerate(task_ids):
                if task in known:
                    out[i, j] = table[source][known[task]]
    return out


class ClipDrivenR(SegmentationNet):
    """ResUNet + CLIP-driven universal model's head: params = controller([proj(GAP(bottleneck)),
    proj(text embedding of the task's prompt for the sample's modality)]).

    The model has no task-specific parameters: a task is defined by its (fixed) prompt
    embedding, so ``new_task_parameters()`` is empty; learning a new task means training the
    shared controller and head, which changes the old tasks' outputs too.
    """

    WIDTH = 256

    def __init__(self, config: ModelConfig, task_ids: Sequence[str], modalities: Sequence[str]):
        super().__init__(config, task_ids, modalities)
        self.encoder = ResUNetEncoder(config)
        self.decoder = ResUNetDecoder(config)
        c4 = config.channels(4)
        text = load_text_embeddings(task_ids, modalities)
        self.register_buffer("text_embedding_0", text.to(torch.empty(0).device))
        self.pool_norm = _pool_norm(c4)
        self.image_proj = nn.Linear(c4, self.WIDTH)
        self.text_proj = nn.Linear(text.shape[-1], self.WIDTH)
        self.controller = nn.Linear(2 * self.WIDTH, DYNAMIC_PARAMS)
        self.head = DynamicHead(config.channels(0))

    def text_table(self) -> torch.Tensor:
        """Prompt embeddings of all tasks ``(|T|, |M|, E)`` (NaN rows: not in the table)."""
        return torch.cat(
            [getattr(self, f"text_embedding_{i}") for i in range(len(self.task_chunks))]
        )

    def add_tasks(self, task_ids: Sequence[str], seed: int = 0) -> None:
        """Add tasks by their prompt embeddings (NaN rows, unusable, for tasks the table lacks)."""
        new = [t for t in dict.fromkeys(task_ids) if t not in self.task_ids]
        if not new:
            return
        device = self.controller.weight.device
        text = load_text_embeddings(new, self.modalities).to(device)
        self.register_buffer(f"text_embedding_{len(self.task_chunks)}", text)
        self.task_ids.extend(new)
        self.task_chunks.append(len(new))

    def new_task_parameters(self) -> list[nn.Parameter]:
        return []

    def _embeddings(self, task_idx: torch.Tensor, modality_idx: torch.Tensor) -> torch.Tensor:
        table = self.text_table()
        valid = task_idx >= 0
        text = table[task_idx.clamp(min=0), modality_idx[:, None]]  # (B, T, E)
        missing = torch.isnan(text).any(-1) & valid
        if bool(missing.any()):
            bad = {
                f"{self.task_ids[int(task_idx[b, s])]} ({self.modalities[int(modality_idx[b])]})"
                for b, s in missing.nonzero().tolist()
            }
            raise TaskError(
                f"no prompt embedding for {', '.join(sorted(bad))} in {TEXT_EMBEDDINGS.name}: "
                f"the table predates these tasks; {_REBUILD}"
            )
        return torch.where(valid[..., None], text, torch.zeros_like(text))

    def forward(
        self, image: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor
    ) -> torch.Tensor:
        self._check_inputs(image, task_idx, modality_idx)
        text = F.relu(self.text_proj(self._embeddings(task_idx, modality_idx)))  # (B, T, W)
        feats = self.encoder(image)
        pooled = self.image_proj(F.relu(self.pool_norm(feats[4])).mean(dim=(2, 3, 4)))  # (B, W)
        params = self.controller(torch.cat([pooled[:, None].expand_as(text), text], dim=-1))
        logits = self.head(_decode(self.decoder, feats), params)
        return logits * valid_mask(task_idx, logits)
