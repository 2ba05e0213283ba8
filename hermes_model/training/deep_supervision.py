"""Deep supervision (nnU-Net's): auxiliary losses at the decoder's lower scales, training only.

``[loss] deep_supervision = [w2, w4]`` adds, beside the full-resolution loss (weight 1), the
loss of predictions made from the decoder's output at 1/2 and 1/4 of the resolution, weighted
w2 and w4 (nnU-Net: 1/2 and 1/4), against targets max-pooled to that grid (a structure narrower
than the pooling window is kept, not dropped). The total is the weighted mean of the scales'
losses. Gradients then reach the decoder's deeper stages directly, which is what the lever of
issue 27 tests.

The network is not changed: an auxiliary prediction reuses the Hermes-R head's task prototypes
(the task-specific part), dotted with the scale's decoder features projected to the prototype
width by one 1x1x1 convolution per scale. Those projections live in :class:`DeepSupervised`, a
training wrapper: they are trained, kept in the resume state, and never exported; inference is
unchanged. The features and prototypes are read with forward hooks, so the wrapper also works
inside DistributedDataParallel (which wraps it, projections included).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hermes_model.errors import ConfigError
from hermes_model.training.losses import LossTerms

__all__ = ["DeepSupervised", "deep_supervision_loss", "downsample_targets"]


def downsample_targets(targets: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, T, D, H, W) binary targets max-pooled by ``factor`` (any voxel of a cell marks it)."""
    pooled = F.max_pool3d(targets.float(), kernel_size=factor, stride=factor, ceil_mode=True)
    return pooled.to(targets.dtype)


class DeepSupervised(nn.Module):
    """A Hermes-R network with auxiliary predictions at lower decoder scales.

    Calling it returns ``(logits, [(factor, aux_logits), ...])``: the network's own logits and,
    per weighted scale, the downsampling factor and (B, T, D/f, H/f, W/f) logits.

    Args:
        model: a ``HermesR`` (decoder ``ups`` and a prototype ``head``).
        weights: loss weights of scales 1/2, 1/4, ... (``len`` = how many scales).
    """

    def __init__(self, model: nn.Module, weights: Sequence[float]) -> None:
        super().__init__()
        decoder, head = getattr(model, "decoder", None), getattr(model, "head", None)
        if decoder is None or not hasattr(head, "mlp") or not hasattr(decoder, "scale"):
            raise ConfigError(
                "loss.deep_supervision needs a Hermes-R network (decoder stages and a prototype "
                f"head); this model is {getattr(getattr(model, 'config', None), 'arch', '?')}"
            )
        ups = decoder.ups
        if not 0 < len(weights) < len(ups):
            raise ConfigError(
                f"loss.deep_supervision gives {len(weights)} weights; give 1 to {len(ups) - 1}, "
                "for the scales 1/2, 1/4, ... (e.g. [0.5, 0.25])"
            )
        self.model = model
        self.weights = [float(w) for w in weights]
        width = model.config.channels(0)  # type: ignore[union-attr, operator]
        # ups[i] outputs scale 2**(3 - i): the full-resolution stage is the last one.
        self.stages = [len(ups) - 2 - k for k in range(len(weights))]
        self.factors = [int(decoder.scale(i)) for i in self.stages]
        self.project = nn.ModuleList(
            nn.Conv3d(model.config.channels(f.bit_length() - 1), width, 1)  # type: ignore[union-attr, operator]
            for f in self.factors
        )
        # Zero at the start: auxiliary logits 0, so their first gradients reach only these
        # projections. From trained weights (the levers start from the shipped model), randomly
        # initialised ones gave logits in the tens and a BCE of ~10 per scale, whose gradients
        # would first pull the shared prototypes and decoder away from what they had learned.
        for parameter in self.project.parameters():
            nn.init.zeros_(parameter)
        self._capture = False  # only while this wrapper runs the model (not in validation)
        self._features: dict[int, torch.Tensor] = {}
        self._prototypes: list[torch.Tensor] = []
        for i in self.stages:
            ups[i].register_forward_hook(self._keeper(i))
        head.mlp.register_forward_hook(self._keep_prototypes)  # type: ignore[union-attr]

    def _keeper(self, index: int) -> Any:
        def keep(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            if self._capture:
                self._features[index] = output

        return keep

    def _keep_prototypes(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        if self._capture:
            self._prototypes = [output]

    def forward(
        self, image: torch.Tensor, task_idx: torch.Tensor, modality_idx: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]:
        self._capture = True
        try:
            logits = self.model(image, task_idx, modality_idx)
        finally:
            self._capture = False
        proto = self._prototypes.pop()
        valid = (task_idx >= 0)[..., None, None, None]
        aux = []
        for i, factor, project in zip(self.stages, self.factors, self.project, strict=True):
            feats = project(self._features.pop(i))
            out = torch.einsum("btc,bcdhw->btdhw", proto.to(feats.dtype), feats)
            aux.append((factor, out * valid.to(out.dtype)))
        return logits, aux


def deep_supervision_loss(
    logits: torch.Tensor,
    aux: Sequence[tuple[int, torch.Tensor]],
    weights: Sequence[float],
    targets: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], LossTerms],
) -> LossTerms:
    """The weighted mean of ``loss(logits, targets)`` (weight 1) and of each auxiliary scale's
    loss against the targets pooled to its grid."""
    terms = [loss(logits, targets)]
    terms += [loss(out, downsample_targets(targets, factor)) for factor, out in aux]
    scale = [1.0, *weights]
    total = sum(scale)

    def mean(k: int) -> torch.Tensor:
        return torch.stack([w * t[k] for w, t in zip(scale, terms, strict=True)]).sum() / total

    return LossTerms(mean(0), mean(1), mean(2))
