"""Shared fixtures: small seeded volumes with real (flipped, permuted, oblique) affines.

Volumes are written with nibabel / SimpleITK directly, never with ``hermes_model.io``, so that the
I/O code is tested against independent writers. Affines map voxel centres to RAS+ mm.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

#: Real data shared by the project (read-only); tests that need it skip when it is absent.
DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """3x3 rotation about ``axis`` (Rodrigues)."""
    u = np.asarray(axis, dtype=np.float64)
    u = u / np.linalg.norm(u)
    a = np.radians(degrees)
    cross = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.cos(a) * np.eye(3) + np.sin(a) * cross + (1 - np.cos(a)) * np.outer(u, u)


def make_affine(
    linear: np.ndarray, origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = origin
    return affine


#: Named test affines: anisotropic spacing everywhere, origins away from zero.
AFFINES: dict[str, np.ndarray] = {
    # RAS, thick slices.
    "anisotropic": make_affine(np.diag([0.7, 0.9, 2.5]), (-12.0, 20.5, -31.0)),
    # LAI: i towards Left, k towards Inferior.
    "flipped": make_affine(np.diag([-0.8, 1.2, -2.5]), (40.0, -17.25, 60.0)),
    # i -> Superior, j -> Left, k -> Anterior ("SLA").
    "permuted": make_affine(
        np.array([[0.0, -0.9, 0.0], [0.0, 0.0, 1.3], [2.0, 0.0, 0.0]]), (5.5, -40.0, 12.0)
    ),
    # 20 degrees about an oblique axis, with a flipped j axis.
    "oblique": make_affine(
        rotation((1.0, 2.0, 3.0), 20.0) @ np.diag([0.9, -1.1, 2.2]), (-30.0, 25.0, 14.0)
    ),
}


@pytest.fixture(autouse=True)
def personal_registry(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """An empty config folder per test: a developer's personal weights.toml never leaks in."""
    folder = tmp_path_factory.mktemp("config")
    monkeypatch.setenv("HERMES_CONFIG_DIR", str(folder))
    return folder / "weights.toml"


@pytest.fixture(params=sorted(AFFINES))
def affine_name(request: pytest.FixtureRequest) -> str:
    """Each named affine in turn."""
    return str(request.param)


@pytest.fixture
def any_affine(affine_name: str) -> np.ndarray:
    return AFFINES[affine_name].copy()


@pytest.fixture
def anisotropic_affine() -> np.ndarray:
    return AFFINES["anisotropic"].copy()


@pytest.fixture
def flipped_affine() -> np.ndarray:
    return AFFINES["flipped"].copy()


@pytest.fixture
def permuted_affine() -> np.ndarray:
    return AFFINES["permuted"].copy()


@pytest.fixture
def oblique_affine() -> np.ndarray:
    return AFFINES["oblique"].copy()


def _smooth_image(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A smooth float32 image in CT-like units (about -700..300): a few low sinusoids."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij")
    image = np.zeros(shape, dtype=np.float64)
    for _ in range(3):
        k = rng.uniform(0.5, 1.5, size=3)
        phase = rng.uniform(0, 2 * np.pi, size=3)
        term = np.ones(shape)
        for axis in range(3):
            term = term * np.cos(np.pi * k[axis] * grids[axis] + phase[axis])
        image += rng.uniform(100, 200) * term
    return (image - 200.0).astype(np.float32)


def write_nifti(
    path: Path, array: np.ndarray, affine: np.ndarray, qform_code: int = 1, sform_code: int = 1
) -> Path:
    img = nib.Nifti1Image(array, affine)
    img.header.set_qform(affine, code=qform_code)
    img.header.set_sform(affine, code=sform_code)
    img.header.set_xyzt_units(xyz="mm")
    nib.save(img, path)
    return path


def write_itk(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write with SimpleITK (NRRD, MHA): LPS direction/origin, (z, y, x) array order."""
    import SimpleITK as sitk

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple((LPS_TO_RAS @ (affine[:3, :3] / spacing)).ravel().tolist()))
    image.SetOrigin(tuple((LPS_TO_RAS @ affine[:3, 3]).tolist()))
    sitk.WriteImage(image, str(path))
    return path


def _write_volume(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``array`` (indexed i, j, k) with ``affine`` in the format the suffix names."""
    if path.name.endswith((".nii", ".nii.gz")):
        return write_nifti(path, array, affine)
    return write_itk(path, array, affine)


@dataclass(frozen=True)
class Volume:
    path: Path
    array: np.ndarray
    affine: np.ndarray


def _make_volume(
    tmp_path: Path,
    affine: np.ndarray,
    shape: tuple[int, int, int] = (20, 24, 16),
    seed: int = 0,
    suffix: str = ".nii.gz",
    dtype: type | np.dtype = np.int16,
    name: str = "volume",
) -> Volume:
    """Write a seeded random volume (values -1024..1500) and return its path, array, affine."""
    rng = np.random.default_rng(seed)
    array = rng.integers(-1024, 1500, size=shape).astype(dtype)
    path = _write_volume(tmp_path / f"{name}{suffix}", array, affine)
    return Volume(path, array, np.asarray(affine, dtype=np.float64))


@pytest.fixture
def make_volume() -> Callable[..., Volume]:
    """``make_volume(tmp_path, affine, shape, seed, suffix=".nii.gz", dtype=np.int16)``."""
    return _make_volume


@pytest.fixture
def smooth_image() -> Callable[..., np.ndarray]:
    """``smooth_image(shape, seed)``: a smooth float32 image in CT-like units."""
    return _smooth_image


@pytest.fixture
def write_volume() -> Callable[[Path, np.ndarray, np.ndarray], Path]:
    """``write_volume(path, array, affine)``: NIfTI (nibabel) or NRRD/MHA (SimpleITK) by suffix."""
    return _write_volume


@pytest.fixture
def data_dir() -> Path:
    """The shared real-data folder; skips the test when it is absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data folder {DATA_DIR} is absent (expected ../shared/data)")
    return DATA_DIR


@pytest.fixture(autouse=True, scope="session")
def _engine_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Compiled-engine cache entries go to a session folder, never the user's cache."""
    import os

    os.environ["HERMES_CACHE_DIR"] = str(tmp_path_factory.mktemp("hermes-cache"))


def copy_ct_series_with_uids(target: Path) -> Path:
    """The shared TotalSegmentator CT series copied to ``target`` with the SOP, study and series
    UIDs that its anonymiser blanked restored (SOP UIDs from the file meta header) and its JPEG
    2000 pixels decompressed; geometry and voxel values are unchanged. Skips when absent."""
    import pydicom

    source = DATA_DIR / "totalsegmentator" / "example_ct_dicom"
    if not source.is_dir():
        pytest.skip(f"real data {source} is absent (expected ../shared/data)")
    target.mkdir(parents=True)
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for path in sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.decompress()
        ds.save_as(target / path.name)
    return target


#: Tasks of the ``tiny_weights`` checkpoint.
TINY_TASKS = ["amos/liver", "amos/spleen", "lits/liver", "lits/liver_tumor"]


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weights checkpoint at 16 mm (one 32-voxel window for a small scan): a whole
    ``hermes segment`` run of a ``write_ct`` scan takes a fraction of a second."""
    import torch

    from hermes_model import create_model, save_checkpoint
    from hermes_model.config import PreprocessConfig

    torch.manual_seed(0)
    model = create_model("tiny", tasks=TINY_TASKS)
    return save_checkpoint(
        model,
        tmp_path_factory.mktemp("tiny-weights") / "tiny.safetensors",
        preprocess=PreprocessConfig(spacing=(16.0, 16.0, 16.0), patch_size=(32, 32, 32)),
    )


def write_ct(path: Path, seed: int = 0, shape: tuple[int, int, int] = (24, 28, 20)) -> Path:
    """A small CT in HU: air (-1000) around a soft-tissue ellipsoid (about 40 HU), with noise,
    on the anisotropic test affine (0.7 x 0.9 x 2.5 mm). Creates the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    body = sum(g**2 for g in grid) < 0.8
    image = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, shape)
    return write_nifti(path, image.astype(np.int16), AFFINES["anisotropic"])


class _StackT(ctypes.Structure):
    _fields_ = [
        ("ss_sp", ctypes.c_void_p),
        ("ss_flags", ctypes.c_int),
        ("ss_size", ctypes.c_size_t),
    ]


def signal_stack_is_usable() -> bool:
    """Is this thread's alternate signal stack (``sigaltstack``, Linux) disabled or mapped? An
    unmapped one kills the process at the next Python signal handler (``engines.openvino``)."""
    stack = _StackT()
    assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack)) == 0
    if stack.ss_flags & 2:  # SS_DISABLE: handlers run on the normal stack
        return True
    start = stack.ss_sp or 0
    for line in Path("/proc/self/maps").read_text().splitlines():
        low, high = (int(a, 16) for a in line.split()[0].split("-"))
        if low <= start and start + stack.ss_size <= high:
            return True
    return False


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test (training tests: on two cores shared with other jobs,
    one thread per test process is faster and steadier); the count is restored after."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
