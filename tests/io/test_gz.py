"""hermes_model.io.gz and the NIfTI bytes built on it: standard gzip from whichever library is
installed, the same decoded file from a C- or Fortran-ordered array, and a working fallback to
the standard library when neither isal nor zlib-ng is installed."""

from __future__ import annotations

import gzip
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hermes_model.io import ImageMeta, gz, read_image
from hermes_model.io.nifti import fortran_order, nifti_bytes, nifti_header


def label_map(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """uint8 labels 0..5 in blocks, seeded: compressible like a real label map."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 6, size=tuple(-(-s // 4) for s in shape), dtype=np.uint8)
    big = coarse.repeat(4, 0).repeat(4, 1).repeat(4, 2)
    return np.ascontiguousarray(big[: shape[0], : shape[1], : shape[2]])


@pytest.mark.parametrize("backend", sorted({gz.BACKEND, "gzip"}))
@pytest.mark.parametrize("level", [0, 1, 2, 6])
def test_compress_is_standard_gzip(backend: str, level: int) -> None:
    data = label_map((40, 33, 21)).tobytes() + b"tail"
    packed = gz.compress(data, level, backend=backend)
    assert gz.is_gzip(packed)
    assert gzip.decompress(packed) == data  # the standard library reads it
    assert gz.decompress(packed) == data
    assert gz.compress(data, level, backend=backend) == packed  # mtime 0: reproducible


def test_an_absent_backend_is_refused() -> None:
    other = "zlib-ng" if gz.BACKEND == "isal" else "isal"
    with pytest.raises(ValueError, match="not installed"):
        gz.compress(b"x", backend=other)


@pytest.mark.parametrize("shape", [(64, 70, 9), (5, 130, 67), (1, 1, 1)])
def test_fortran_order_keeps_every_value(shape: tuple[int, int, int]) -> None:
    array = label_map(shape, seed=1)
    out = fortran_order(array)
    assert out.flags.f_contiguous
    np.testing.assert_array_equal(out, array)
    assert fortran_order(out) is out or np.shares_memory(fortran_order(out), out)


@pytest.mark.parametrize("dtype", [np.uint8, bool, np.float32])
def test_nifti_bytes_decode_to_what_nibabel_writes(oblique_affine, dtype) -> None:
    """The decoded file equals nibabel's own bytes for the C-ordered array (the old way)."""
    shape = (23, 17, 9)
    meta = ImageMeta.from_affine(oblique_affine, shape)
    values = label_map(shape, seed=2)
    array = (values > 2) if dtype is bool else values.astype(dtype)
    on_disk = np.uint8 if dtype is bool else dtype
    reference = array.astype(on_disk)
    img = nib.Nifti1Image(reference, affine=None, header=nifti_header(meta, reference))
    img.header.set_data_dtype(reference.dtype)
    expected = img.to_bytes()
    for layout in (np.ascontiguousarray(array), np.asfortranarray(array)):
        payload = nifti_bytes(layout, meta, "mask.nii.gz")
        assert gz.is_gzip(payload)
        assert gzip.decompress(payload) == expected
        assert nifti_bytes(layout, meta, "mask.nii") == expected


def test_read_image_of_a_multi_member_gzip(tmp_path: Path, anisotropic_affine) -> None:
    data = label_map((20, 21, 22)).astype(np.int16)
    raw = nib.Nifti1Image(data, anisotropic_affine).to_bytes()
    path = tmp_path / "two_members.nii.gz"
    path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    array, meta = read_image(path)
    np.testing.assert_array_equal(array, data)
    np.testing.assert_allclose(meta.affine, anisotropic_affine)


def test_without_isal_and_zlib_ng_the_standard_library_serves(tmp_path: Path) -> None:
    """A fresh interpreter where importing isal and zlib_ng fails writes and reads as usual."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["isal"] = None  # import isal -> ImportError
        sys.modules["zlib_ng"] = None
        import gzip
        import numpy as np
        from hermes_model.io import ImageMeta, gz, read_image, write_image
        assert gz.BACKEND == "gzip", gz.BACKEND
        data = (np.arange(24 * 20 * 7).reshape(24, 20, 7) % 5).astype(np.uint8)
        meta = ImageMeta.from_affine(np.diag([0.8, 1.1, 2.5, 1.0]), data.shape)
        path = write_image(data, meta, {str(tmp_path / "mask.nii.gz")!r})
        gzip.decompress(path.read_bytes())
        back, written = read_image(path)
        assert np.array_equal(back, data) and np.allclose(written.affine, meta.affine)
        print("ok", gz.BACKEND)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "gzip"]
