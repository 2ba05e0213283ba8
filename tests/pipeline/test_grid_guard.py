"""pipeline.preprocess.check_grid: a header whose spacing would make the resampled grid absurd
is refused before anything is allocated, naming the header field that holds the spacing."""

from __future__ import annotations

import numpy as np
import pytest

from hermes_model.config import PreprocessConfig
from hermes_model.errors import InputError
from hermes_model.io import ImageMeta
from hermes_model.pipeline.preprocess import MAX_EXTENT_MM, check_grid, prepare, resampled_shape


def _meta(shape: tuple[int, int, int], spacing: float, fmt: str) -> ImageMeta:
    affine = np.diag([spacing, spacing, spacing, 1.0])
    return ImageMeta.from_affine(affine, shape, source=f"scan.{fmt}", format=fmt)


def test_a_grid_too_large_at_the_model_spacing_is_refused_naming_the_field() -> None:
    meta = _meta((900, 900, 900), 10.0, "nrrd")  # 9 m: inside the extent limit
    target = (0.5, 0.5, 0.5)
    size = resampled_shape(meta.shape, meta.spacing, target)
    with pytest.raises(InputError, match=r"scan.nrrd: resampling .* needs 5.83e\+12 voxels") as e:
        check_grid(meta, target, size)
    assert "space directions" in str(e.value) and "\n" not in str(e.value)


def test_a_scan_longer_than_any_body_is_refused_before_prepare_allocates() -> None:
    meta = _meta((20, 20, 20), 1e6, "dicom")
    assert MAX_EXTENT_MM < 20 * 1e6
    config = PreprocessConfig(spacing=(16.0, 16.0, 16.0), patch_size=(32, 32, 32))
    array = np.zeros(meta.shape, np.int16)
    with pytest.raises(InputError, match=r"makes the scan 2e\+04 m long along axis 0") as e:
        prepare(array, meta, config, "ct")
    assert "PixelSpacing (0028,0030)" in str(e.value)


def test_ordinary_scans_pass() -> None:
    meta = _meta((512, 512, 300), 0.8, "nifti")
    check_grid(meta, (1.5, 1.5, 1.5), resampled_shape(meta.shape, meta.spacing, (1.5,) * 3))
