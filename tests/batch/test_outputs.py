"""hermes_model.batch.outputs.write_case: the files of one case, encoded in parallel threads, are
the masks and label map on the input's exact geometry, in a fixed order, and reproducible."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from hermes_model.batch.outcome import BatchOptions
from hermes_model.batch.outputs import write_case
from hermes_model.io import ImageMeta, read_image
from hermes_model.pipeline.result import SegmentationResult

TASKS = ["amos/liver", "amos/spleen", "amos/pancreas", "lits/liver_tumor"]


def result_on(meta: ImageMeta, fortran: bool, probabilities: bool = False) -> SegmentationResult:
    """Seeded masks (one empty) and their label map; Fortran- or C-ordered like finalise's."""
    rng = np.random.default_rng(5)
    shape = meta.shape
    masks = rng.random((len(TASKS), *shape)) > np.array([0.7, 0.8, 1.0, 0.95])[:, None, None, None]
    label = np.zeros(shape, np.uint8)
    for row in range(len(TASKS)):
        label[masks[row]] = row + 1
    if fortran:
        # (I, J, K, T) in Fortran order: each task's (I, J, K) mask is Fortran-contiguous.
        masks = np.moveaxis(np.asfortranarray(np.moveaxis(masks, 0, -1)), -1, 0)
        assert masks[0].flags.f_contiguous
        label = np.asfortranarray(label)
    probs = torch.from_numpy(rng.random((len(TASKS), *shape), dtype=np.float32)).half()
    return SegmentationResult(
        task_ids=list(TASKS), masks=torch.from_numpy(masks), label_map=torch.from_numpy(label),
        probabilities=probs if probabilities else None,
        volumes_ml={t: float(m.sum()) for t, m in zip(TASKS, masks, strict=True)},
        voxel_counts={t: int(m.sum()) for t, m in zip(TASKS, masks, strict=True)},
        modality="ct", modality_confidence=1.0, meta=meta,
    )  # fmt: skip


@pytest.mark.parametrize("fortran", [False, True])
def test_split_files_are_the_masks_on_the_input_geometry(tmp_path, oblique_affine, fortran) -> None:
    shape = (21, 18, 11)
    source = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), oblique_affine), source)
    _, meta = read_image(source)
    result = result_on(meta, fortran, probabilities=True)
    options = BatchOptions(output_dir=tmp_path / "out", split=True, probabilities=True)
    paths = write_case("scan", str(source), result, np.zeros(shape), options)
    names = [str(p.relative_to(options.output_dir)) for p in paths]
    stems = ["liver", "spleen", "pancreas", "liver_tumor"]
    per_task = [[f"scan/{s}.nii.gz", f"scan/{s}_probability.nii.gz"] for s in stems]
    assert names == ["scan.nii.gz", *sum(per_task, []), "scan.json"]
    source_header = nib.load(source).header
    for path, expected in [(paths[0], result.labels())] + [
        (options.output_dir / "scan" / f"{s}.nii.gz", result.mask(t))
        for s, t in zip(stems, TASKS, strict=True)
    ]:
        gzip.decompress(path.read_bytes())  # standard gzip
        img = nib.load(path)
        data = np.asarray(img.dataobj)
        assert data.dtype == np.uint8
        np.testing.assert_array_equal(data, expected.astype(np.uint8))
        for field in ("pixdim", "srow_x", "srow_y", "srow_z", "quatern_b", "qoffset_x"):
            np.testing.assert_array_equal(img.header[field], source_header[field])
        np.testing.assert_array_equal(img.affine, nib.load(source).affine)
    probability = nib.load(options.output_dir / "scan" / "spleen_probability.nii.gz")
    np.testing.assert_array_equal(np.asarray(probability.dataobj), result.probability(TASKS[1]))
    legend = json.loads(paths[-1].read_text())
    assert list(legend["written"]) == names[:-1]
    assert legend["written"]["scan.nii.gz"]["bytes"] == paths[0].stat().st_size


def test_files_do_not_depend_on_the_memory_order_and_are_reproducible(
    tmp_path, flipped_affine
) -> None:
    meta = ImageMeta.from_affine(flipped_affine, (19, 23, 8))
    written = {}
    for run, fortran in enumerate((False, True, True)):
        options = BatchOptions(output_dir=tmp_path / str(run), split=True)
        paths = write_case("case", "in.nii.gz", result_on(meta, fortran), np.zeros(0), options)
        written[run] = {p.name: p.read_bytes() for p in paths if p.suffix == ".gz"}
    assert len(written[0]) == 1 + len(TASKS)
    assert written[0] == written[1] == written[2]  # byte for byte
