"""Segmentation networks with one forward signature:

    model(image (B, 1, D, H, W) float, task_idx (B, T) long, -1 = padding, modality_idx (B,) long)
        -> logits (B, T, D, H, W)

``task_idx`` indexes ``model.task_ids``; ``modality_idx`` indexes ``model.modalities``.
A padded slot's logits are zeros and must be ignored by the caller. Hermes-R with
``config.null_token`` appends its learned null token itself: callers pass real tasks only.

- ``HermesR``: ResUNet + task/modality prior pools fused by bi-directional cross-attention at
  the configured scales; hierarchical posterior prototypes; logits = <prototype, features>.
- ``ResUNet``: the plain backbone with one output channel per task (the "traditional" baseline);
  ``task_idx`` just selects channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hermes_model.config import ModelConfig
from hermes_model.errors import ConfigError
from hermes_model.nets.fusion import PriorFusion
from hermes_model.nets.resunet import ResUNetDecoder, ResUNetEncoder

__all__ = ["SegmentationNet", "HermesR", "ResUNet", "PrototypeHead", "MIN_SIZE"]

#: Smallest input edge in voxels, as the authors' network: after four 2x poolings an axis of 16
#: is one voxel thick at the bottleneck, and instance norm still has the other axes' voxels.
MIN_SIZE = 16


class SegmentationNet(nn.Module):
    """What every Hermes network shares: its task list, modalities and task bookkeeping."""

    def __init__(self, config: ModelConfig, task_ids: Sequence[str], modalities: Sequence[str]):
        super().__init__()
        if not task_ids:
            raise ConfigError("a model needs at least one task")
        if len(set(task_ids)) != len(task_ids):
            raise ConfigError(f"duplicate task ids in {list(task_ids)}")
        self.config = config
        self.task_ids: list[str] = list(task_ids)
        self.modalities: list[str] = list(modalities)
        #: Sizes of the task-token chunks: the first is the original pool, one more per add_tasks.
        self.task_chunks: list[int] = [len(task_ids)]

    def task_index(self, task_ids: Sequence[str]) -> list[int]:
        """Positions of ``task_ids`` in this model's pool (a KeyError names an unknown task)."""
        lookup = {t: i for i, t in enumerate(self.task_ids)}
        missing = [t for t in task_ids if t not in lookup]
        if missing:
            raise KeyError(f"tasks {missing} are not in this model ({len(self.task_ids)} tasks)")
        return [lookup[t] for t in task_ids]

    def add_tasks(self, task_ids: Sequence[str], seed: int = 0) -> None:
        """Grow the task pool; every existing parameter stays bit-identical."""
        new = [t for t in task_ids if t not in self.task_ids]
        if not new:
            return
        generator = torch.Generator().manual_seed(seed)
        self._grow(len(new), generator)
        self.task_ids.extend(new)
        self.task_chunks.append(len(new))

    def _grow(self, n: int, generator: torch.Generator) -> None:
        raise NotImplementedError

    def new_task_parameters(self) -> list[nn.Parameter]:
        """The parameters of the most recently added task chunk (for incremental learning)."""
        raise NotImplementedError

    @staticmethod
    def _check_inputs(image: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor):
        if image.ndim != 5:
            raise ValueError(f"image must be (B, C, D, H, W), got shape {tuple(image.shape)}")
        if task_idx.ndim != 2 or task_idx.shape[0] != image.shape[0]:
            raise ValueError(f"task_idx must be (B, T), got {tuple(task_idx.shape)}")
        if modality_idx.shape != (image.shape[0],):
            raise ValueError(f"modality_idx must be (B,), got {tuple(modality_idx.shape)}")
        if min(image.shape[2:]) < MIN_SIZE:
            raise ValueError(
                f"spatial size {tuple(image.shape[2:])} is too small: each axis needs at least "
                f"{MIN_SIZE} voxels (pad the input or use a larger patch)"
            )


class PrototypeHead(nn.Module):
    """Hierarchical prototypes: concat posteriors of all scales → LN → MLP → (B, T, C')."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim),
            nn.Linear(out_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim),
        )  # fmt: skip
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, posteriors: list[torch.Tensor], feats: torch.Tensor) -> torch.Tensor:
        proto = self.mlp(self.norm(torch.cat(posteriors, dim=-1)))  # (B, T, C')
        return torch.einsum("btc,bcdhw->btdhw", proto.to(feats.dtype), feats)


class HermesR(SegmentationNet):
    """Hermes with a ResUNet backbone (paper Fig. 2, Fig. 4A)."""

    def __init__(self, config: ModelConfig, task_ids: Sequence[str], modalities: Sequence[str]):
        super().__init__(config, task_ids, modalities)
        self.encoder = ResUNetEncoder(config)
        self.decoder = ResUNetDecoder(config)
        l_mod = config.modality_tokens if config.modality_prior else 0

        def fusion(scale: int, depth: int) -> PriorFusion:
            dim = config.channels(scale.bit_length() - 1)
            return PriorFusion(
                dim, len(task_ids), len(modalities), l_mod, depth, config.head_dim,
                config.mlp_ratio, config.bidirectional, null_token=config.null_token,
                separate_feature_norm=config.separate_feature_norm,
                ffn_norm_eps=config.ffn_norm_eps,
            )  # fmt: skip

        self.enc_fusion = nn.ModuleDict(
            {
                str(s): fusion(
                    s, config.fusion_depth_bottleneck if s == 16 else config.fusion_depth
                )
                for s in config.fusion_encoder_scales
            }
        )
        self.dec_fusion = nn.ModuleDict(
            {str(s): fusion(s, config.fusion_depth) for s in config.fusion_decoder_scales}
        )
        dims = [f.dim for f in self._fusions()]
        head_in = sum(dims) if config.hierarchical else dims[-1]
        self.head = PrototypeHead(head_in, config.channels(0))

    def _fusions(self) -> list[PriorFusion]:
        return [*self.enc_fusion.values(), *self.dec_fusion.values()]  # type: ignore[list-item]

    def _grow(self, n: int, generator: torch.Generator) -> None:
        for f in self._fusions():
            f.add_tasks(n, generator)

    def new_task_parameters(self) -> list[nn.Parameter]:
        return [f.task_prior[-1] for f in self._fusions()]

    def forward(
        self, image: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor
    ) -> torch.Tensor:
        self._check_inputs(image, task_idx, modality_idx)
        feats, posteriors = self._encode(image, task_idx, modality_idx)
        x = feats[4]
        for i, up in enumerate(self.decoder.ups):
            x = up(x, feats[3 - i])
            key = str(ResUNetDecoder.scale(i))
            if key in self.dec_fusion:
                x, post = self.dec_fusion[key](x, task_idx, modality_idx)
                posteriors.append(post)
        if not self.config.hierarchical:
            posteriors = posteriors[-1:]
        logits = self.head(posteriors, x)
        return logits * (task_idx >= 0)[..., None, None, None].to(logits.dtype)

    def _encode(
        self, image: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Encoder features (scales 1x..16x) with the priors fused in, and the encoder
        fusions' task posteriors in ``enc_fusion`` order.

        ``sequential``: a fused map feeds the next down stage (the authors' code).
        ``parallel`` (legacy): the whole encoder runs first, then each scale is fused alone.
        """
        posts: dict[str, torch.Tensor] = {}
        if self.config.fusion_order == "parallel":
            feats = self.encoder(image)
            for s, fusion in self.enc_fusion.items():
                i = int(s).bit_length() - 1
                feats[i], posts[s] = fusion(feats[i], task_idx, modality_idx)
        else:
            feats = [self.encoder.stem(image)]
            for i, stage in enumerate(self.encoder.stages):
                x = stage(feats[-1])
                key = str(2 ** (i + 1))
                if key in self.enc_fusion:
                    x, posts[key] = self.enc_fusion[key](x, task_idx, modality_idx)
                feats.append(x)
        return feats, [posts[s] for s in self.enc_fusion]


class ResUNet(SegmentationNet):
    """Plain ResUNet with a 1³ conv head of one channel per task (chunked like the prior pools)."""

    def __init__(self, config: ModelConfig, task_ids: Sequence[str], modalities: Sequence[str]):
        super().__init__(config, task_ids, modalities)
        self.encoder = ResUNetEncoder(config)
        self.decoder = ResUNetDecoder(config)
        c0 = config.channels(0)
        head = nn.Linear(c0, len(task_ids))  # a 1³ conv, stored as (T, C) rows per chunk
        self.head_weight = nn.ParameterList([nn.Parameter(head.weight.detach().clone())])
        self.head_bias = nn.ParameterList([nn.Parameter(head.bias.detach().clone())])

    def _grow(self, n: int, generator: torch.Generator) -> None:
        c0 = self.config.channels(0)
        bound = 1.0 / c0**0.5
        device = self.head_weight[0].device
        w = torch.empty(n, c0).uniform_(-bound, bound, generator=generator)
        b = torch.empty(n).uniform_(-bound, bound, generator=generator)
        self.head_weight.append(nn.Parameter(w.to(device)))
        self.head_bias.append(nn.Parameter(b.to(device)))

    def new_task_parameters(self) -> list[nn.Parameter]:
        return [self.head_weight[-1], self.head_bias[-1]]

    def forward(
        self, image: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor
    ) -> torch.Tensor:
        self._check_inputs(image, task_idx, modality_idx)
        feats = self.encoder(image)
        x = feats[4]
        for i, up in enumerate(self.decoder.ups):
            x = up(x, feats[3 - i])
        valid = task_idx >= 0
        w = torch.cat(list(self.head_weight))[task_idx.clamp(min=0)]  # (B, T, C)
        b = torch.cat(list(self.head_bias))[task_idx.clamp(min=0)]
        logits = (
            torch.einsum("btc,bcdhw->btdhw", w.to(x.dtype), x)
            + b.to(x.dtype)[..., None, None, None]
        )
        return logits * valid[..., None, None, None].to(logits.dtype)
