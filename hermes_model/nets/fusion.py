"""Prior fusion (paper appendix B.1, eq. 5-6): bi-directional cross-attention between prior
tokens ``p`` (B, K, C) and a feature map flattened to tokens ``X`` (B, N, C).

Padded prior tokens (``valid`` False) take part in no attention: they are masked out as keys
when the features read from the priors, and their own updates are zeroed, so a real task's
output never depends on how much padding its batch carries.

The optional *null* token (``ModelConfig.null_token``) is different: a learned token appended
after every sample's task tokens, attended to like a real task; its posterior is dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hermes_model.nets.heads import uniform

__all__ = ["CrossAttention", "FusionBlock", "PriorPool", "PriorFusion"]


class CrossAttention(nn.Module):
    """Multi-head attention of ``query`` tokens over ``context`` tokens.

    ``key_mask`` (B, Lk) bool, True for tokens that may be attended to.
    """

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.heads = max(1, dim // head_dim)
        inner = self.heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(
        self, query: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, lq, _ = query.shape
        lk = context.shape[1]
        q = self.to_q(query).view(b, lq, self.heads, -1).transpose(1, 2)
        k, v = self.to_kv(context).view(b, lk, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).reshape(b, lq, -1))


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, ratio: int) -> None:
        super().__init__(nn.Linear(dim, dim * ratio), nn.GELU(), nn.Linear(dim * ratio, dim))


class FusionBlock(nn.Module):
    """One bi-directional block: priors read the features (eq. 5), then, if ``bidirectional``,
    the features read the posterior priors (eq. 6). Pre-norm, residuals, FFNs."""

    def __init__(
        self,
        dim: int,
        head_dim: int,
        mlp_ratio: int,
        bidirectional: bool,
        separate_feature_norm: bool = False,
        ffn_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.norm_p = nn.LayerNorm(dim)
        self.norm_x = nn.LayerNorm(dim)
        self.prior_attn = CrossAttention(dim, head_dim)
        self.prior_ffn_norm = nn.LayerNorm(dim, eps=ffn_norm_eps)
        self.prior_ffn = FeedForward(dim, mlp_ratio)
        self.norm_x2: nn.LayerNorm | None = None
        if bidirectional:
            if separate_feature_norm:
                self.norm_x2 = nn.LayerNorm(dim)
            self.norm_p2 = nn.LayerNorm(dim)
            self.feat_attn = CrossAttention(dim, head_dim)
            self.feat_ffn_norm = nn.LayerNorm(dim, eps=ffn_norm_eps)
            self.feat_ffn = FeedForward(dim, mlp_ratio)

    def forward(
        self, x: torch.Tensor, p: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, N, C) features, p (B, K, C) priors, valid (B, K) bool → updated (x, p)."""
        keep = valid[..., None].to(p.dtype)
        x_n = self.norm_x(x)
        p = p + self.prior_attn(self.norm_p(p), x_n)
        p = (p + self.prior_ffn(self.prior_ffn_norm(p))) * keep
        if self.bidirectional:
            query = x_n if self.norm_x2 is None else self.norm_x2(x)
            x = x + self.feat_attn(query, self.norm_p2(p), key_mask=valid)
            x = x + self.feat_ffn(self.feat_ffn_norm(x))
        return x, p


class PriorPool(nn.Module):
    """One scale's task prior pool ``(|T|, C)`` and modality prior pool ``(|M|, l, C)``.

    The task pool is a list of chunks so that ``add_tasks`` appends new tokens without touching
    (or re-allocating) the existing ones; incremental learning trains only the new chunk.
    ``select`` gathers the oracle-selected ``[p_t, p_m]``. With ``null_token`` a learned
    ``null_prior`` (1, C), kept apart from the task chunks, follows each sample's task tokens.
    """

    def __init__(
        self,
        dim: int,
        num_tasks: int,
        num_modalities: int,
        modality_tokens: int,
        null_token: bool = False,
    ):
        super().__init__()
        self.dim = dim
        tokens = nn.init.xavier_uniform_(torch.empty(num_tasks + int(null_token), dim))
        self.task_prior = nn.ParameterList([nn.Parameter(tokens[:num_tasks].clone())])
        self.null_prior = nn.Parameter(tokens[num_tasks:].clone()) if null_token else None
        self.modality_prior = (
            nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_modalities, modality_tokens, dim)))
            if modality_tokens
            else None
        )

    def add_tasks(self, n: int, generator: torch.Generator | None = None) -> None:
        bound = (6.0 / (n + self.dim)) ** 0.5  # xavier_uniform_ of an (n, dim) matrix
        device = self.task_prior[0].device
        self.task_prior.append(nn.Parameter(uniform((n, self.dim), bound, generator, device)))

    def select(
        self, task_idx: torch.Tensor, modality_idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Priors ``[p_t, (null), p_m]`` (B, T + n + l, C), zeros in padded slots, and their
        validity (B, T + n + l); n is 1 with a null token, else 0."""
        pool = torch.cat(list(self.task_prior), dim=0)
        valid = task_idx >= 0
        tokens = pool[task_idx.clamp(min=0)] * valid[..., None].to(pool.dtype)
        if self.null_prior is not None:
            b = task_idx.shape[0]
            tokens = torch.cat([tokens, self.null_prior.expand(b, 1, -1)], dim=1)
            valid = torch.cat([valid, valid.new_ones(b, 1)], dim=1)
        if self.modality_prior is None:
            return tokens, valid
        mod = self.modality_prior[modality_idx]
        mod_valid = torch.ones(mod.shape[:2], dtype=torch.bool, device=mod.device)
        return torch.cat([tokens, mod], dim=1), torch.cat([valid, mod_valid], dim=1)


class PriorFusion(PriorPool):
    """A stack of fusion blocks at one scale, with this scale's prior pools."""

    def __init__(
        self,
        dim: int,
        num_tasks: int,
        num_modalities: int,
        modality_tokens: int,
        depth: int,
        head_dim: int,
        mlp_ratio: int,
        bidirectional: bool,
        *,
        null_token: bool = False,
        separate_feature_norm: bool = False,
        ffn_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__(dim, num_tasks, num_modalities, modality_tokens, null_token)
        self.blocks = nn.ModuleList(
            FusionBlock(
                dim, head_dim, mlp_ratio, bidirectional, separate_feature_norm, ffn_norm_eps
            )
            for _ in range(depth)
        )

    def forward(
        self, x: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, D, H, W) → (prior-injected x of the same shape, task posteriors (B, T, C))."""
        b, c, d, h, w = x.shape
        p, valid = self.select(task_idx, modality_idx)
        p = p.to(x.dtype)
        tokens = x.flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens, p = block(tokens, p, valid)
        x = tokens.transpose(1, 2).reshape(b, c, d, h, w)
        return x, p[:, : task_idx.shape[1]]
