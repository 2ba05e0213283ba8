# Over 400 lines: MedFormer's blocks and Hermes-M are one architecture, read top to bottom.
"""MedFormer backbone (Gao et al., 2022) and Hermes-M (paper §3, appendix B.1, eq. 7, Table 6).

Layout; scales are downsampling factors, channels ``config.channels(s)`` (32-64-128-256-320 for
Base), block counts ``config.num_blocks``:

    1x          stem: 3³ conv + BasicBlock
    2x          patch merging + num_blocks[0] BasicBlocks                      (conv stem, end)
    4x, 8x, 16x patch merging + semantic map + num_blocks[1..3] B-MHA blocks
                semantic-map fusion: the three maps attend to each other (small transformer)
    8x, 4x      upsample + skip; merge the maps; num_blocks[2], num_blocks[1] B-MHA blocks
    2x, 1x      upsample + skip; residual conv stages (ResUNet's up stage)

B-MHA (bidirectional multi-head attention) couples a feature map X (N = D·H·W tokens) with a
semantic map M (``map_size³`` tokens: a learned soft pooling of X) through ONE logit matrix
``Q·Q̄ᵀ`` with shared query/key (eq. 7): softmax over its rows lets X read M, softmax over its
columns (the transpose) lets M read X. Cost O(N·|M|).

Hermes-M appends the oracle-selected prior tokens to the semantic map inside the B-MHA stages
listed in ``fusion_encoder_scales`` / ``fusion_decoder_scales``: ``I_M = [M, p_t, p_m]``. The
priors are each stage's own pools (as in Hermes-R), they read the features and the features
read them in the same attention; after the stage ``I_M`` is split into the map (which goes on)
and the posterior tokens (which go to the hierarchical ``PrototypeHead``). Padded task tokens
are masked as keys and their updates zeroed, so they take part in no attention.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from hermes_model.config import ModelConfig
from hermes_model.nets.fusion import CrossAttention, FeedForward, PriorPool
from hermes_model.nets.heads import TaskHead, valid_mask
from hermes_model.nets.hermes import PrototypeHead, SegmentationNet
from hermes_model.nets.resunet import BasicBlock, UpStage

__all__ = ["MedFormer", "HermesM", "MedFormerBackbone", "BMHABlock", "PriorPool", "Priors"]


#: Builds the norm of a stage's map tokens from their width.
MapNorm = Callable[[int], nn.Module]
#: A B-MHA stage's output: features, semantic map, posterior prior tokens (None without priors).
StageOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def _norm(ch: int) -> nn.InstanceNorm3d:
    return nn.InstanceNorm3d(ch, eps=1e-4)


def _preact(in_ch: int, out_ch: int, kernel: int = 1, groups: int = 1) -> nn.Sequential:
    """InstanceNorm → ReLU → conv (no bias)."""
    conv = nn.Conv3d(in_ch, out_ch, kernel, padding=kernel // 2, groups=groups, bias=False)
    return nn.Sequential(_norm(in_ch), nn.ReLU(), conv)


class DepthwiseSeparable(nn.Sequential):
    """Depthwise 3³ conv, then pointwise 1³ conv (MedFormer's projection of feature maps)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv3d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False),
            nn.Conv3d(in_ch, out_ch, 1, bias=False),
        )


class PatchMerging(nn.Module):
    """Lossless 2x downsampling: every 2³ neighbourhood becomes 8·C channels (an odd edge is
    zero-padded first), instance norm, depthwise-separable conv to ``out_ch``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm = _norm(8 * in_ch)
        self.reduce = DepthwiseSeparable(8 * in_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, h, w = x.shape[2:]
        x = F.pad(x, (0, w % 2, 0, h % 2, 0, d % 2))
        b, c, d, h, w = x.shape
        x = x.view(b, c, d // 2, 2, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 7, 2, 4, 6)
        return self.reduce(self.norm(x.reshape(b, 8 * c, d // 2, h // 2, w // 2)))


class MBConv(nn.Module):
    """B-MHA feed-forward: inverted bottleneck (1³ expand, depthwise 3³, squeeze-and-excitation,
    1³ project), pre-activation, residual."""

    def __init__(self, ch: int, ratio: int) -> None:
        super().__init__()
        hidden = ch * ratio
        self.expand = _preact(ch, hidden)
        self.depthwise = _preact(hidden, hidden, kernel=3, groups=hidden)
        squeeze = max(1, hidden // 4)
        self.excite = nn.Sequential(
            nn.AdaptiveAvgPool3d(1), nn.Conv3d(hidden, squeeze, 1), nn.ReLU(),
            nn.Conv3d(squeeze, hidden, 1), nn.Sigmoid(),
        )  # fmt: skip
        self.project = nn.Sequential(_norm(hidden), nn.Conv3d(hidden, ch, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.depthwise(self.expand(x))
        return x + self.project(h * self.excite(h))


class TokenInstanceNorm(nn.Module):
    """Instance norm over the tokens of a semantic map ``(B, K, C)``, per channel (MedFormer's
    norm of its 4³ map). Hermes-M uses LayerNorm instead: per token, so the prior tokens appended
    to the map neither shift the map's statistics nor depend on how many of them there are."""

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(m.transpose(1, 2)).transpose(1, 2)


class Priors(NamedTuple):
    """Prior tokens appended to a semantic map: ``tokens`` (B, P, C); ``readable`` (B, P) bool,
    tokens the features may attend to; ``valid`` (B, P) bool, tokens that are updated (padded
    ones stay zero)."""

    tokens: torch.Tensor
    readable: torch.Tensor
    valid: torch.Tensor


class BMHABlock(nn.Module):
    """Bidirectional attention between features ``x`` (B, C_in, D, H, W) and map tokens ``m``
    (B, K, C_map) with one shared logit matrix (eq. 7), then MBConv. Returns
    ``(x (B, C_out, D, H, W), m (B, K, C_map))``."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        map_dim: int,
        config: ModelConfig,
        map_norm: MapNorm,
        map_out: bool = True,
    ) -> None:
        super().__init__()
        self.heads = max(1, out_ch // config.head_dim)
        self.head_dim = out_ch // self.heads
        inner = self.heads * self.head_dim
        self.feat_norm = _norm(in_ch)
        self.map_norm = map_norm(map_dim)
        self.feat_qv = DepthwiseSeparable(in_ch, 2 * inner)
        self.map_qv = nn.Linear(map_dim, 2 * inner, bias=False)
        self.feat_out = DepthwiseSeparable(inner, out_ch)
        # The last decoder block's map is only read out (posteriors), never attended to again:
        # MedFormer drops its projection there.
        self.map_out: nn.Module = (
            nn.Linear(inner, map_dim, bias=False) if map_out or inner != map_dim else nn.Identity()
        )
        self.shortcut: nn.Module = nn.Identity() if in_ch == out_ch else _preact(in_ch, out_ch)
        self.ffn = MBConv(out_ch, config.mlp_ratio)

    def forward(
        self,
        x: torch.Tensor,
        m: torch.Tensor,
        readable: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, d, h, w = x.shape
        k = m.shape[1]
        q, v = self.feat_qv(self.feat_norm(x)).view(b, 2, self.heads, self.head_dim, -1).unbind(1)
        q, v = q.transpose(-1, -2), v.transpose(-1, -2)  # (B, heads, N, dh)
        mq, mv = self.map_qv(self.map_norm(m)).view(b, k, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        logits = (q * self.head_dim**-0.5) @ mq.transpose(-1, -2)  # (B, heads, N, K)
        to_map = logits
        if readable is not None:
            to_map = logits.masked_fill(~readable[:, None, None, :], float("-inf"))
        x_new = to_map.softmax(-1) @ mv  # features read the map: (B, heads, N, dh)
        m_new = logits.softmax(-2).transpose(-1, -2) @ v  # the map reads them: (B, heads, K, dh)
        x_new = x_new.transpose(-1, -2).reshape(b, -1, d, h, w)
        x = self.ffn(self.feat_out(x_new) + self.shortcut(x))
        m = m + self.map_out(m_new.transpose(1, 2).reshape(b, k, -1))
        if valid is not None:
            m = m * valid[..., None].to(m.dtype)
        return x, m


def _attend(
    blocks: nn.ModuleList, x: torch.Tensor, m: torch.Tensor, priors: Priors | None
) -> StageOutput:
    """Run B-MHA ``blocks`` on ``x`` and ``[m, priors]``; returns (x, map, posterior tokens)."""
    if priors is None:
        for block in blocks:
            x, m = block(x, m)
        return x, m, None
    k = m.shape[1]
    always = torch.ones(m.shape[:2], dtype=torch.bool, device=m.device)
    readable = torch.cat([always, priors.readable], dim=1)
    valid = torch.cat([always, priors.valid], dim=1)
    tokens = torch.cat([m, priors.tokens.to(m.dtype)], dim=1)
    for block in blocks:
        x, tokens = block(x, tokens, readable, valid)
    return x, tokens[:, :k], tokens[:, k:]


class SemanticMap(nn.Module):
    """Soft pooling of a feature map ``(B, C, D, H, W)`` into ``map_size³`` tokens ``(B, K, C)``:
    each token is a softmax-weighted sum over all voxels of projected features."""

    def __init__(self, ch: int, map_size: int) -> None:
        super().__init__()
        self.values = nn.Conv3d(ch, ch, 3, padding=1, bias=False)
        self.weights = nn.Conv3d(ch, map_size**3, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.weights(x).flatten(2).softmax(-1)  # (B, K, N)
        return weights @ self.values(x).flatten(2).transpose(1, 2)


class _TransformerLayer(nn.Module):
    """Pre-norm self-attention and feed-forward (ratio 1) on tokens (B, L, C)."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, 1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        n = self.norm1(t)
        t = t + self.attn(n, n)
        return t + self.ffn(self.norm2(t))


class MapFusion(nn.Module):
    """The maps of the 4x, 8x, 16x stages, projected to one width, concatenated and refined by a
    pre-norm transformer (FFN ratio 1), then projected back: global context across scales."""

    def __init__(self, dims: Sequence[int], dim: int, depth: int, head_dim: int) -> None:
        super().__init__()
        self.into = nn.ModuleList(nn.Linear(c, dim, bias=False) for c in dims)
        self.back = nn.ModuleList(nn.Linear(dim, c, bias=False) for c in dims)
        self.layers = nn.Sequential(*[_TransformerLayer(dim, head_dim) for _ in range(depth)])

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        sizes = [m.shape[1] for m in maps]
        t = torch.cat([proj(m) for proj, m in zip(self.into, maps, strict=True)], dim=1)
        t = self.layers(t)
        return [proj(c) for proj, c in zip(self.back, t.split(sizes, dim=1), strict=True)]


class DownStage(nn.Module):
    """Patch merging, semantic map, B-MHA blocks (encoder 4x, 8x, 16x)."""

    def __init__(
        self, in_ch: int, out_ch: int, blocks: int, config: ModelConfig, map_norm: MapNorm
    ):
        super().__init__()
        self.merge = PatchMerging(in_ch, out_ch)
        self.map = SemanticMap(out_ch, config.map_size)
        self.blocks = nn.ModuleList(
            BMHABlock(out_ch, out_ch, out_ch, config, map_norm) for _ in range(blocks)
        )

    def forward(self, x: torch.Tensor, priors: Priors | None) -> StageOutput:
        x = self.merge(x)
        return _attend(self.blocks, x, self.map(x), priors)


class UpAttentionStage(nn.Module):
    """Upsample to the skip's size, concatenate; merge the map from below with the encoder's
    map of this scale (per token, along channels); B-MHA blocks (decoder 8x, 4x)."""

    def __init__(
        self,
        in_ch: int,
        skip_ch: int,
        blocks: int,
        config: ModelConfig,
        map_norm: MapNorm,
        last: bool,
    ) -> None:
        super().__init__()
        self.align_corners = config.align_corners
        self.merge_maps = nn.Linear(in_ch + skip_ch, skip_ch, bias=False)
        self.blocks = nn.ModuleList(
            BMHABlock(in_ch + skip_ch if i == 0 else skip_ch, skip_ch, skip_ch, config, map_norm,
                      map_out=not (last and i == blocks - 1))
            for i in range(blocks)
        )  # fmt: skip

    def forward(
        self,
        x: torch.Tensor,
        skip: torch.Tensor,
        m: torch.Tensor,
        skip_map: torch.Tensor,
        priors: Priors | None,
    ) -> StageOutput:
        up = F.interpolate(
            x.float(), size=skip.shape[2:], mode="trilinear", align_corners=self.align_corners
        )
        x = torch.cat([skip, up.to(skip.dtype)], dim=1)
        m = self.merge_maps(torch.cat([m, skip_map], dim=-1))
        return _attend(self.blocks, x, m, priors)


class BackboneOutput(NamedTuple):
    features: torch.Tensor  # (B, C0, D, H, W), full resolution
    aux_features: torch.Tensor  # (B, C2, D/4, H/4, W/4), the 4x decoder output
    posteriors: dict[str, torch.Tensor]  # stage key → (B, P, C) prior tokens after the stage


class MedFormerBackbone(nn.Module):
    """MedFormer without a head. ``forward(image, priors)``: ``priors`` maps a stage key
    (``STAGES``: ``enc4 enc8 enc16 dec8 dec4``) to the Priors appended to that stage's map."""

    STAGES = ("enc4", "enc8", "enc16", "dec8", "dec4")

    def __init__(self, config: ModelConfig, map_norm: MapNorm) -> None:
        super().__init__()
        c = [config.channels(s) for s in range(5)]
        n = config.num_blocks
        self.stem = nn.Sequential(
            nn.Conv3d(config.in_channels, c[0], 3, padding=1, bias=False), BasicBlock(c[0], c[0])
        )
        self.down2 = nn.Sequential(
            PatchMerging(c[0], c[1]), *[BasicBlock(c[1], c[1]) for _ in range(n[0])]
        )
        self.down = nn.ModuleList(
            DownStage(c[s], c[s + 1], n[s], config, map_norm) for s in (1, 2, 3)
        )
        self.map_fusion = MapFusion(c[2:], c[4], config.map_fusion_depth, config.head_dim)
        self.up = nn.ModuleList(
            [UpAttentionStage(c[4], c[3], n[2], config, map_norm, last=False),
             UpAttentionStage(c[3], c[2], n[1], config, map_norm, last=True)]
        )  # fmt: skip
        corners = config.align_corners
        self.up_conv = nn.ModuleList(
            [UpStage(c[2], c[1], n[0], corners), UpStage(c[1], c[0], 2, corners)]
        )

    def forward(self, image: torch.Tensor, priors: Mapping[str, Priors]) -> BackboneOutput:
        posteriors: dict[str, torch.Tensor] = {}
        skips = [self.stem(image)]
        skips.append(self.down2(skips[0]))
        maps = []
        x = skips[1]
        for key, stage in zip(self.STAGES[:3], self.down, strict=True):
            x, m, post = stage(x, priors.get(key))
            skips.append(x)
            maps.append(m)
            if post is not None:
                posteriors[key] = post
        maps = self.map_fusion(maps)
        m = maps[2]
        for i, (key, stage) in enumerate(zip(self.STAGES[3:], self.up, strict=True)):
            x, m, post = stage(x, skips[3 - i], m, maps[1 - i], priors.get(key))
            if post is not None:
                posteriors[key] = post
        aux = x
        x = self.up_conv[0](x, skips[1])
        x = self.up_conv[1](x, skips[0])
        return BackboneOutput(x, aux, posteriors)


class MedFormer(SegmentationNet):
    """Plain MedFormer, the "traditional" model: one output channel per task (chunked 1³ head),
    plus a 1³ auxiliary head on the 4x decoder output for deep supervision."""

    def __init__(self, config: ModelConfig, task_ids: Sequence[str], modalities: Sequence[str]):
        super().__init__(config, task_ids, modalities)
        self.backbone = MedFormerBackbone(config, lambda dim: TokenInstanceNorm())
        self.head = TaskHead(config.channels(0), len(task_ids))
        self.aux_head = TaskHead(config.channels(2), len(task_ids))

    def _grow(self, n: int, generator: torch.Generator) -> None:
        self.head.grow(n, generator)
        self.aux_head.grow(n, generator)

    def new_task_parameters(self) -> list[nn.Parameter]:
        return [*self.head.new_parameters(), *self.aux_head.new_parameters()]

    def forward_with_aux(
        self, image: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(logits (B, T, D, H, W), [aux logits (B, T, D', H', W') at 4x])``; the caller
        downsamples the target (or upsamples the logits) for the auxiliary loss."""
        self._check_inputs(image, task_idx, modality_idx)
        out = self.backbone(image, {})
        return self.head(out.features, task_idx), [self.aux_head(out.aux_features, task_idx)]

    def forward(
        self, image: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor
    ) -> torch.Tensor:
        self._check_inputs(image, task_idx, modality_idx)
        return self.head(self.backbone(image, {}).features, task_idx)


class HermesM(SegmentationNet):
    """Hermes with a MedFormer backbone (paper Fig. 4B): prior tokens inside B-MHA, posterior
    tokens of every fused stage → the hierarchical ``PrototypeHead`` (as Hermes-R);
    logits = <prototype, features>. Deep supervision: the same prototypes, projected to the 4x
    decoder width, against the 4x decoder features."""

    def __init__(self, config: ModelConfig, task_ids: Sequence[str], modalities: Sequence[str]):
        super().__init__(config, task_ids, modalities)
        self.backbone = MedFormerBackbone(config, nn.LayerNorm)
        c = [config.channels(s) for s in range(5)]
        dims = {"enc4": c[2], "enc8": c[3], "enc16": c[4], "dec8": c[3], "dec4": c[2]}
        scales = [f"enc{s}" for s in config.fusion_encoder_scales]
        scales += [f"dec{s}" for s in config.fusion_decoder_scales]
        keys = [k for k in MedFormerBackbone.STAGES if k in scales]
        l_mod = config.modality_tokens if config.modality_prior else 0
        self.priors = nn.ModuleDict(
            {k: PriorPool(dims[k], len(task_ids), len(modalities), l_mod) for k in keys}
        )
        head_in = sum(dims[k] for k in keys) if config.hierarchical else dims[keys[-1]]
        self.head = PrototypeHead(head_in, c[0])
        self.aux_proto = nn.Linear(c[0], c[2], bias=False)

    def _pools(self) -> list[PriorPool]:
        return list(self.priors.values())  # type: ignore[arg-type]

    def _grow(self, n: int, generator: torch.Generator) -> None:
        for pool in self._pools():
            pool.add_tasks(n, generator)

    def new_task_parameters(self) -> list[nn.Parameter]:
        return [pool.task_prior[-1] for pool in self._pools()]

    def forward_with_aux(
        self, image: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(logits (B, T, D, H, W), [aux logits (B, T, D', H', W') at 4x])``."""
        self._check_inputs(image, task_idx, modality_idx)
        priors = {}
        for key, pool in self.priors.items():
            tokens, valid = cast(PriorPool, pool).select(task_idx, modality_idx)
            readable = valid if self.config.bidirectional else torch.zeros_like(valid)
            priors[key] = Priors(tokens, readable, valid)
        out = self.backbone(image, priors)
        n_tasks = task_idx.shape[1]
        posteriors = [out.posteriors[k][:, :n_tasks] for k in self.priors]
        if not self.config.hierarchical:
            posteriors = posteriors[-1:]
        proto = self.head.mlp(self.head.norm(torch.cat(posteriors, dim=-1)))  # (B, T, C0)
        logits = torch.einsum("btc,bcdhw->btdhw", proto.to(out.features.dtype), out.features)
        aux_proto = self.aux_proto(proto).to(out.aux_features.dtype)
        aux = torch.einsum("btc,bcdhw->btdhw", aux_proto, out.aux_features)
        return logits * valid_mask(task_idx, logits), [aux * valid_mask(task_idx, aux)]

    def forward(
        self, image: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor
    ) -> torch.Tensor:
        return self.forward_with_aux(image, task_idx, modality_idx)[0]
