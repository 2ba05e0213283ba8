"""Configuration as data: frozen dataclasses, named presets, one factory input.

``ModelConfig`` describes a network; ``PreprocessConfig`` describes how an image is turned into
the network's input (and back). Presets are registry entries that differ only in fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hermes_model.errors import ConfigError

__all__ = [
    "ModelConfig",
    "PreprocessConfig",
    "LEGACY_DEFAULTS",
    "MODEL_PRESETS",
    "model_config",
    "preset_names",
]


#: Architectures that ``hermes_model.nets.build_model`` knows.
ARCHS: tuple[str, ...] = (
    "resunet",
    "hermes-r",
    "medformer",
    "hermes-m",
    "multi-decoder-r",
    "dodnet-r",
    "clip-driven-r",
)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a segmentation network.

    Attributes:
        arch: ``resunet`` (plain multi-output ResUNet) or ``hermes-r`` (ResUNet + context priors);
            ``medformer`` (plain MedFormer) or ``hermes-m`` (MedFormer, priors inside B-MHA);
            the universal baselines on the ResUNet backbone (paper Table 7): ``multi-decoder-r``,
            ``dodnet-r``, ``clip-driven-r``.
        base_channels: channels of the full-resolution stage; stage ``s`` has
            ``base_channels * channel_multipliers[s]`` channels (32-64-128-256-320 for Base).
        num_blocks: residual BasicBlocks in each of the four downsampling stages (the decoder
            mirrors them). MedFormer: BasicBlocks at 2x, B-MHA blocks at 4x, 8x, 16x.
        fusion_encoder_scales: downsampling factors (4, 8, 16) after whose encoder stage a prior
            fusion module runs. Empty for a plain ResUNet.
        fusion_decoder_scales: decoder scales (8, 4) with a fusion module, as in the authors' code.
        fusion_depth: bi-directional attention blocks per fusion module.
        fusion_depth_bottleneck: blocks at the 16x scale (the coarsest, cheapest one).
        bidirectional: if False, priors read from the features but never write back (ablation).
        hierarchical: concatenate task posteriors of every fused scale (True) or use only the
            last fused scale (False) before the prototype MLP (ablation).
        modality_prior: use the modality prior pool (ablation).
        modality_tokens: ``l``, tokens per modality (paper: 10).
        head_dim: attention head width; heads = channels // head_dim.
        mlp_ratio: FFN hidden width as a multiple of the channels (MedFormer: MBConv expansion).
        map_size: MedFormer semantic map edge; each B-MHA stage has ``map_size**3`` map tokens.
        map_fusion_depth: transformer layers of MedFormer's semantic-map fusion.

    Fields that pin down the function exactly (paper parity with the authors' code, issue 9).
    The defaults are the authors' choices; checkpoints written before these fields existed
    load with ``LEGACY_DEFAULTS`` instead, so they keep computing what they always computed:

        fusion_order: ``sequential`` (the authors): each encoder fusion's output feeds the next
            down stage, so deeper stages see the priors; ``parallel`` (legacy): the encoder runs
            to the end first and each scale is fused on its own. Decoder fusions always feed the
            next up stage.
        align_corners: trilinear upsampling in the decoder with ``align_corners=True`` (the
            authors) or False (legacy).
        separate_feature_norm: the feature-aggregation attention (image reads the priors) has
            its own LayerNorm for the feature queries (the authors), rather than reusing the one
            of the prior-aggregation direction (legacy).
        ffn_norm_eps: LayerNorm eps before each fusion FFN (the authors: 1e-4; legacy 1e-5).
        null_token: Hermes-R only. One learned *null* task token per fusion scale is appended
            to every sample's task tokens and attended to unmasked (the authors' row ``tn`` of
            ``task_prior``, reached as index -1 in their code); its output channel is dropped.
            Callers pass only real task indices; -1 stays *padding*, which is masked.
    """

    arch: str = "hermes-r"
    in_channels: int = 1
    base_channels: int = 32
    channel_multipliers: tuple[int, ...] = (1, 2, 4, 8, 10)
    num_blocks: tuple[int, ...] = (2, 2, 2, 2)
    fusion_encoder_scales: tuple[int, ...] = (4, 8, 16)
    fusion_decoder_scales: tuple[int, ...] = (8, 4)
    fusion_depth: int = 2
    fusion_depth_bottleneck: int = 4
    bidirectional: bool = True
    hierarchical: bool = True
    modality_prior: bool = True
    modality_tokens: int = 10
    head_dim: int = 32
    mlp_ratio: int = 4
    map_size: int = 4
    map_fusion_depth: int = 2
    fusion_order: str = "sequential"
    align_corners: bool = True
    separate_feature_norm: bool = True
    ffn_norm_eps: float = 1e-4
    null_token: bool = True

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown architecture {self.arch!r}; use one of {', '.join(ARCHS)}")
        if len(self.channel_multipliers) != 5 or len(self.num_blocks) != 4:
            raise ConfigError(
                "channel_multipliers needs 5 entries and num_blocks 4 (four 2x downsamplings); "
                f"got {self.channel_multipliers} and {self.num_blocks}"
            )
        bad = [s for s in self.fusion_encoder_scales if s not in (4, 8, 16)]
        bad += [s for s in self.fusion_decoder_scales if s not in (4, 8)]
        if bad:
            raise ConfigError(
                f"fusion scales {bad} are not allowed: encoder scales are 4, 8, 16 and "
                "decoder scales 8, 4"
            )
        if self.arch in ("hermes-r", "hermes-m") and not (
            self.fusion_encoder_scales or self.fusion_decoder_scales
        ):
            raise ConfigError(f"{self.arch} needs at least one fusion scale")
        if self.fusion_order not in ("sequential", "parallel"):
            raise ConfigError(
                f"fusion_order must be 'sequential' or 'parallel', got {self.fusion_order!r}"
            )
        if self.modality_tokens < 1:
            raise ConfigError(f"modality_tokens must be >= 1, got {self.modality_tokens}")
        if self.arch in ("medformer", "hermes-m") and (
            min(self.num_blocks) < 1 or self.map_size < 1 or self.map_fusion_depth < 0
        ):
            raise ConfigError(
                f"{self.arch} needs num_blocks >= 1 per stage, map_size >= 1 and "
                f"map_fusion_depth >= 0; got {self.num_blocks}, {self.map_size}, "
                f"{self.map_fusion_depth}"
            )

    def channels(self, stage: int) -> int:
        """Channels of stage ``stage`` (0 = full resolution, 4 = 16x)."""
        return self.base_channels * self.channel_multipliers[stage]

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with some fields changed; unknown fields are a ConfigError."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(
                f"unknown model option(s) {unknown}; known options: {', '.join(sorted(known))}"
            )
        fixed: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()
        }
        return dataclasses.replace(self, **fixed)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """The config recorded in ``data``; fields it lacks take ``LEGACY_DEFAULTS`` (files
        written before those fields existed), then the dataclass defaults."""
        return cls().replace(**{**LEGACY_DEFAULTS, **data})


#: What a checkpoint that does not record these fields computed (Hermes before paper parity).
LEGACY_DEFAULTS: dict[str, Any] = {
    "fusion_order": "parallel",
    "align_corners": False,
    "separate_feature_norm": False,
    "ffn_norm_eps": 1e-5,
    "null_token": False,
}


@dataclass(frozen=True)
class PreprocessConfig:
    """How a scan becomes network input, and how outputs go back to the scan's grid.

    Attributes:
        spacing: target voxel size in mm along the canonical axes (R, A, S).
        orientation: canonical axis codes the network sees (``RAS``: +x right... in the
            NIfTI/RAS+ world convention; array axis 0 runs towards R, 1 towards A, 2 towards S).
        ct_clip: HU window applied to CT before z-scoring.
        mr_percentiles: percentile window applied to MR before z-scoring.
        patch_size: sliding-window / training patch in voxels (canonical axis order).
        norm_region: where the z-score's mean and std come from: ``volume`` (every voxel, as in
            training on crops; the default) or ``body`` (voxels inside the body: CT above -500
            HU, MR/PET above 10% of the clip window). Whole scans hold far more air than the
            label-cropped volumes that the authors' weights were trained on; ``body`` keeps
            the statistics closer to those crops.
    """

    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    orientation: str = "RAS"
    ct_clip: tuple[float, float] = (-990.0, 500.0)
    mr_percentiles: tuple[float, float] = (2.0, 98.0)
    patch_size: tuple[int, int, int] = (128, 128, 128)
    norm_region: str = "volume"

    def __post_init__(self) -> None:
        if self.norm_region not in ("volume", "body"):
            raise ConfigError(f"norm_region must be 'volume' or 'body', got {self.norm_region!r}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ConfigError(f"spacing must be three positive mm values, got {self.spacing}")
        if len(self.patch_size) != 3 or min(self.patch_size) < 8:
            raise ConfigError(f"patch_size must be three sizes >= 8 voxels, got {self.patch_size}")

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown preprocessing option(s) {unknown}; known: {sorted(known)}")
        fixed: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fixed)


_NO_FUSION: dict[str, Any] = {
    "arch": "resunet",
    "fusion_encoder_scales": (),
    "fusion_decoder_scales": (),
}

_NO_PRIORS: dict[str, Any] = {"fusion_encoder_scales": (), "fusion_decoder_scales": ()}
_TINY_RESUNET: dict[str, Any] = {"base_channels": 4, "num_blocks": (1, 1, 1, 1)}
# MedFormer / Hermes-M keep the decoder upsampling they were built and tested with: there are
# no reference outputs of the authors' Hermes-M to check a change against (docs/parity.md).
_MEDFORMER_UPSAMPLING: dict[str, Any] = {"align_corners": False}
_TINY_MEDFORMER: dict[str, Any] = {
    "base_channels": 4,
    "num_blocks": (1, 1, 1, 1),
    "head_dim": 8,
    "mlp_ratio": 2,
    "map_size": 2,
    "map_fusion_depth": 1,
}

#: Named presets. ``hermes-r-*`` differ from ``resunet-*`` only by the prior fusion.
MODEL_PRESETS: dict[str, ModelConfig] = {
    "resunet-small": ModelConfig(base_channels=16, **_NO_FUSION),
    "resunet-base": ModelConfig(base_channels=32, **_NO_FUSION),
    "resunet-large": ModelConfig(base_channels=64, **_NO_FUSION),
    "hermes-r-small": ModelConfig(base_channels=16),
    "hermes-r-base": ModelConfig(base_channels=32),
    "hermes-r-large": ModelConfig(base_channels=64),
    # For tests: a few thousand voxels per second on one CPU core.
    "tiny": ModelConfig(
        base_channels=4,
        num_blocks=(1, 1, 1, 1),
        fusion_depth=1,
        fusion_depth_bottleneck=1,
        modality_tokens=4,
        head_dim=8,
        mlp_ratio=2,
    ),
    "resunet-tiny": ModelConfig(base_channels=4, num_blocks=(1, 1, 1, 1), **_NO_FUSION),
    # MedFormer as in the Hermes paper (Table 6: 43.2M; Hermes-M 44.5M with 42 tasks).
    "medformer-base": ModelConfig(
        arch="medformer", num_blocks=(2, 2, 4, 8), **_NO_PRIORS, **_MEDFORMER_UPSAMPLING
    ),
    "hermes-m-base": ModelConfig(arch="hermes-m", num_blocks=(2, 2, 4, 8), **_MEDFORMER_UPSAMPLING),
    "medformer-tiny": ModelConfig(
        arch="medformer", **_TINY_MEDFORMER, **_NO_PRIORS, **_MEDFORMER_UPSAMPLING
    ),
    "hermes-m-tiny": ModelConfig(
        arch="hermes-m", modality_tokens=4, **_TINY_MEDFORMER, **_MEDFORMER_UPSAMPLING
    ),
    # Universal baselines on the ResUNet-Base backbone (paper §4.2, Table 7).
    "multi-decoder-r": ModelConfig(arch="multi-decoder-r", **_NO_PRIORS),
    "dodnet-r": ModelConfig(arch="dodnet-r", **_NO_PRIORS),
    "clip-driven-r": ModelConfig(arch="clip-driven-r", **_NO_PRIORS),
    "multi-decoder-r-tiny": ModelConfig(arch="multi-decoder-r", **_TINY_RESUNET, **_NO_PRIORS),
    "dodnet-r-tiny": ModelConfig(arch="dodnet-r", **_TINY_RESUNET, **_NO_PRIORS),
    "clip-driven-r-tiny": ModelConfig(arch="clip-driven-r", **_TINY_RESUNET, **_NO_PRIORS),
}


def preset_names() -> list[str]:
    return sorted(MODEL_PRESETS)


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The preset ``name`` with ``overrides`` applied."""
    if name not in MODEL_PRESETS:
        import difflib

        close = difflib.get_close_matches(name, MODEL_PRESETS, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown model preset {name!r}.{hint} Presets: {', '.join(preset_names())}"
        )
    return MODEL_PRESETS[name].replace(**overrides) if overrides else MODEL_PRESETS[name]
