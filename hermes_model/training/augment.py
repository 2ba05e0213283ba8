"""Batched data augmentation in torch, on the training device (the GPU when there is one).

Per sample, each with its own probability (``AugmentConfig``):
- spatial: rotation about each axis (uniform in +-rotation_deg) and zoom (uniform in
  ``scale_range``; > 1 zooms in), one ``affine_grid`` / ``grid_sample`` per batch (image
  trilinear, targets nearest, so they stay binary and on the same voxels). The sampler draws a
  patch ``crop_margin`` voxels larger on each side; the transform maps the output patch into its
  centre, so rotated corners hold image rather than padding. Outside the input the image gets
  the sample's minimum, the targets 0;
- mirroring along ``mirror_axes`` (image and targets flipped together). Along the body's
  left-right axis a lateral task becomes its partner (``tasks.pairs``): :meth:`Augmenter.with_tasks`
  asks a mirrored sample for ``parotid_right`` where its target is the flipped left parotid;
- intensity (image only, probability per modality): brightness multiplication and shift,
  gamma (statistics kept), contrast (range kept), Gaussian blur, Gaussian noise.

All randomness comes from one ``torch.Generator`` on the device; every call draws the same
number of values, so a run is reproducible and resumes from ``state_dict()`` (a uint8 tensor).
Rotations are in voxel units, i.e. physical ones after isotropic resampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from hermes_model.errors import ConfigError
from hermes_model.training.settings import AugmentConfig

__all__ = ["Augmenter", "mirror_partners"]


def mirror_partners(
    config: AugmentConfig, orientation: str, task_ids: Sequence[str]
) -> tuple[list[int] | None, int]:
    """The Augmenter's ``partners`` and ``left_right_axis`` for a model's tasks.

    ConfigError naming the task when left-right mirroring is asked for and a lateral task's
    partner is not one of the model's tasks (its mirror image would have no label to learn).
    """
    from hermes_model.tasks.pairs import NO_PARTNER, lateral_partner, left_right_axis, mirror_rows

    axis = left_right_axis(orientation)
    rows = mirror_rows(task_ids)
    if config.enabled and config.p_mirror > 0 and axis in config.mirror_axes:
        for task, row in zip(task_ids, rows, strict=True):
            if row == NO_PARTNER:
                raise ConfigError(
                    f"augment.mirror_axes mirrors left-right (axis {axis}), which turns {task} "
                    f"into {lateral_partner(task)}, a task the model does not have; add that "
                    f"task or leave axis {axis} out of mirror_axes"
                )
    return (None if rows == list(range(len(rows))) else rows), axis


class Augmenter:
    """Augments collated batches: ``image, targets = augmenter(image, targets, modality_idx)``,
    or with the task indices when left-right mirroring must swap paired tasks
    (:meth:`with_tasks`).

    Args:
        config: augmentation settings.
        patch_size: output patch (D, H, W); inputs must be :attr:`input_size`.
        seed: seed of the generator.
        device: where the generator (and so the batches) live.
        modalities: the model's modality rows (picks each sample's intensity probability).
        partners: per model task row, the row a left-right mirror image asks for
            (``tasks.pairs.mirror_rows``); None when no task has a side.
        left_right_axis: the canonical axis along the body's left-right direction (0 in RAS).
    """

    def __init__(
        self,
        config: AugmentConfig,
        patch_size: Sequence[int],
        seed: int = 0,
        device: torch.device | str = "cpu",
        modalities: Sequence[str] | None = None,
        partners: Sequence[int] | None = None,
        left_right_axis: int = 0,
    ) -> None:
        from hermes_model.tasks import MODALITIES, modality_family
        from hermes_model.tasks.pairs import NO_PARTNER

        self.config = config
        self.patch_size = (int(patch_size[0]), int(patch_size[1]), int(patch_size[2]))
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        # One probability per modality row of the model; a row without its own entry takes its
        # family's (``mr`` for ``mr-t2``).
        p = config.p_intensity
        self._p_intensity = [
            float(p.get(m, p.get(modality_family(m), 0.0))) for m in (modalities or MODALITIES)
        ]
        self.left_right_axis = left_right_axis
        self.partners: torch.Tensor | None = None
        if partners is not None and list(partners) != list(range(len(partners))):
            if self.mirrors_left_right and NO_PARTNER in partners:
                raise ValueError(
                    "left-right mirroring needs the partner of every lateral task; leave the "
                    f"left-right axis ({left_right_axis}) out of augment.mirror_axes"
                )
            self.partners = torch.tensor(list(partners), dtype=torch.long, device=device)

    @property
    def mirrors_left_right(self) -> bool:
        """Whether some samples are mirrored along the body's left-right axis."""
        c = self.config
        return c.enabled and c.p_mirror > 0 and self.left_right_axis in c.mirror_axes

    @property
    def margin(self) -> int:
        spatial = self.config.enabled and self.config.p_spatial > 0
        return self.config.crop_margin if spatial else 0

    @property
    def input_size(self) -> tuple[int, int, int]:
        """Patch size the sampler must draw: the output patch plus the margin on each side."""
        m = 2 * self.margin
        return (self.patch_size[0] + m, self.patch_size[1] + m, self.patch_size[2] + m)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"].cpu())

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, device=self.generator.device)

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.generator.device)

    @torch.no_grad()
    def __call__(
        self, image: torch.Tensor, targets: torch.Tensor, modality_idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch.

        Args:
            image: (B, 1, *input_size) float, on the generator's device.
            targets: (B, T, *input_size) binary, any dtype.
            modality_idx: (B,) int64 modality ids (picks the intensity probability).

        Returns:
            image (B, 1, *patch_size) float32 and targets (B, T, *patch_size) in their dtype.
        """
        if self.partners is not None and self.mirrors_left_right:
            raise ValueError(
                "the model has paired tasks: augment with with_tasks(), which swaps them"
            )
        image, targets, _ = self._augment(image, targets, modality_idx)
        return image, targets

    @torch.no_grad()
    def with_tasks(
        self,
        image: torch.Tensor,
        targets: torch.Tensor,
        modality_idx: torch.Tensor,
        task_idx: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As calling the augmenter, plus what each target channel now shows.

        ``task_idx`` (B, T) holds model task rows (-1 = padding). A sample mirrored left-right
        gets each lateral task's partner row (its flipped left parotid is a right parotid); the
        others keep theirs. The random draws are the same as a plain call's.
        """
        image, targets, flipped = self._augment(image, targets, modality_idx)
        if self.partners is None or not bool(flipped.any()):
            return image, targets, task_idx
        partners = self.partners.to(task_idx.device)
        swapped = torch.where(task_idx >= 0, partners[task_idx.clamp(min=0)], task_idx)
        mirrored = flipped.to(task_idx.device)[:, None]
        return image, targets, torch.where(mirrored, swapped, task_idx)

    def _augment(
        self,
        image: torch.Tensor,
        targets: torch.Tensor,
        modality_idx: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image, targets and which samples were mirrored left-right ((B,) bool)."""
        if tuple(image.shape[2:]) != self.input_size or image.shape[2:] != targets.shape[2:]:
            raise ValueError(
                f"expected image and targets of spatial size {self.input_size}, got "
                f"{tuple(image.shape[2:])} and {tuple(targets.shape[2:])}"
            )
        image = image.float()
        if not self.config.enabled:
            none = torch.zeros(image.shape[0], dtype=torch.bool)
            return self._centre(image), self._centre(targets), none
        image, targets = self._spatial(image, targets)
        image, targets, flipped = self._mirror(image, targets)
        return self._intensity(image, modality_idx), targets, flipped

    def _centre(self, tensor: torch.Tensor) -> torch.Tensor:
        m = self.margin
        if not m:
            return tensor
        d, h, w = self.patch_size
        return tensor[:, :, m : m + d, m : m + h, m : m + w]

    def _spatial(
        self, image: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        batch = image.shape[0]
        chosen = self._rand(batch) < c.p_spatial
        angles = (self._rand(batch, 3) * 2 - 1) * math.radians(c.rotation_deg)
        low, high = c.scale_range
        zoom = low + self._rand(batch) * (high - low)
        out_image, out_targets = self._centre(image).clone(), self._centre(targets).clone()
        index = chosen.nonzero().flatten()
        if index.numel() == 0:
            return out_image, out_targets
        theta = _theta(angles[index], zoom[index], self.input_size, self.patch_size)
        n = index.numel()
        grid = F.affine_grid(theta, [n, 1, *self.patch_size], align_corners=False)
        source = image[index]
        floor = source.amin(dim=(1, 2, 3, 4), keepdim=True)
        warped = F.grid_sample(source - floor, grid, mode="bilinear", align_corners=False)
        out_image[index] = warped + floor
        labels = targets[index].float()
        warped_labels = F.grid_sample(labels, grid, mode="nearest", align_corners=False)
        out_targets[index] = warped_labels.to(targets.dtype)
        return out_image, out_targets

    def _mirror(
        self, image: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        flips = self._rand(image.shape[0], 3) < self.config.p_mirror
        for axis in self.config.mirror_axes:
            index = flips[:, axis].nonzero().flatten()
            if index.numel():
                image[index] = image[index].flip(2 + axis)
                targets[index] = targets[index].flip(2 + axis)
        left_right = self.left_right_axis in self.config.mirror_axes
        flipped = flips[:, self.left_right_axis] if left_right else torch.zeros_like(flips[:, 0])
        return image, targets, flipped.cpu()

    def _intensity(self, image: torch.Tensor, modality_idx: torch.Tensor) -> torch.Tensor:
        c = self.config
        batch = image.shape[0]
        table = torch.tensor(self._p_intensity, device=image.device)
        p = table[modality_idx.to(image.device).clamp(0, len(self._p_intensity) - 1)]
        on = (self._rand(batch, 6).to(image.device) < p[:, None]).view(batch, 6, 1, 1, 1, 1)
        u = self._rand(batch, 5).to(image.device).view(batch, 5, 1, 1, 1, 1)
        shift = self._randn(batch).to(image.device).view(batch, 1, 1, 1, 1)
        noise = self._randn(*image.shape).to(image.device)

        def between(k: int, bounds: tuple[float, float]) -> torch.Tensor:
            return bounds[0] + u[:, k] * (bounds[1] - bounds[0])

        image = torch.where(on[:, 0], image * between(0, c.brightness_range), image)
        image = torch.where(on[:, 1], image + shift * c.brightness_shift_std, image)
        image = torch.where(on[:, 2], _gamma(image, between(1, c.gamma_range)), image)
        image = torch.where(on[:, 3], _contrast(image, between(2, c.contrast_range)), image)
        blur = on[:, 4].flatten().nonzero().flatten()
        if blur.numel():
            sigmas = between(3, c.blur_sigma_range).flatten()
            image = image.clone()
            for b in blur.tolist():
                image[b] = _blur(image[b], float(sigmas[b]))
        std = u[:, 4] * c.noise_std_max
        return torch.where(on[:, 5], image + noise * std, image)


def _theta(
    angles: torch.Tensor, zoom: torch.Tensor, size_in: Sequence[int], size_out: Sequence[int]
) -> torch.Tensor:
    """(N, 3, 4) affine_grid matrices: rotate + zoom about the centre, in voxel units.

    affine_grid works in normalised (x, y, z) = (W, H, D) coordinates; with align_corners=False
    the output voxel at normalised u lies u * size_out / 2 voxels from the centre. So
    theta = diag(2 / size_in) @ R / zoom @ diag(size_out / 2), all in (x, y, z) order.
    """
    cos, sin = angles.cos(), angles.sin()
    n = angles.shape[0]
    one, zero = torch.ones(n, device=angles.device), torch.zeros(n, device=angles.device)

    def rot(i: int, a: int, b: int) -> torch.Tensor:
        m = torch.stack([one, zero, zero, zero, one, zero, zero, zero, one], 1).view(n, 3, 3)
        m = m.clone()
        m[:, a, a], m[:, a, b], m[:, b, a], m[:, b, b] = cos[:, i], -sin[:, i], sin[:, i], cos[:, i]
        return m

    rotation = rot(0, 1, 2) @ rot(1, 0, 2) @ rot(2, 0, 1)
    xyz_in = torch.tensor([size_in[2], size_in[1], size_in[0]], device=angles.device).float()
    xyz_out = torch.tensor([size_out[2], size_out[1], size_out[0]], device=angles.device).float()
    matrix = torch.diag(2.0 / xyz_in) @ (rotation / zoom.view(n, 1, 1)) @ torch.diag(xyz_out / 2)
    return torch.cat([matrix, torch.zeros(n, 3, 1, device=angles.device)], dim=2)


def _stats(image: torch.Tensor) -> tuple[torch.Tensor, ...]:
    flat = image.flatten(1)
    shape = (-1, 1, 1, 1, 1)
    return (
        flat.amin(1).view(shape),
        flat.amax(1).view(shape),
        flat.mean(1).view(shape),
        flat.std(1).view(shape),
    )


def _gamma(image: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """x -> ((x - min) / range)^gamma * range + min, then the original mean and std restored."""
    low, high, mean, std = _stats(image)
    span = (high - low).clamp_min(1e-6)
    out = ((image - low) / span).clamp(0, 1) ** gamma * span + low
    _, _, new_mean, new_std = _stats(out)
    return (out - new_mean) / new_std.clamp_min(1e-6) * std + mean


def _contrast(image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """(x - mean) * factor + mean, clipped to the original range."""
    low, high, mean, _ = _stats(image)
    return torch.maximum(torch.minimum((image - mean) * factor + mean, high), low)


def _blur(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (1, D, H, W) volume (edges replicated)."""
    radius = math.ceil(3 * sigma)
    x = torch.arange(-radius, radius + 1, device=volume.device, dtype=volume.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    out = volume[None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel.view(shape))
    return out[0]
