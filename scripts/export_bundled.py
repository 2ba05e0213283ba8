"""Turn a training run's checkpoint into the weights that ship inside the package.

    python scripts/export_bundled.py /work/runs/bundled_universal/best.safetensors \
        --name universal-hermes-r --data universal \
        --recipe train/recipes/bundled_universal.toml \
        --out hermes_model/assets/universal-hermes-r.safetensors

``--data`` names the attribution of the training data (``hippocampus``, ``openkbp`` or
``universal``: both); ``--data-text`` gives any other sentence.

Stores float16 tensors (half the size; loading returns float32), keeps the training metadata
(config, tasks, groups, preprocessing, provenance) and adds the release fields: name, licence and
the data's attribution. Prints the sha256 to put into weights.toml.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hermes_model.config import PreprocessConfig
from hermes_model.weights.checkpoint import load_checkpoint, save_checkpoint, sha256_file

HIPPOCAMPUS = (
    "Medical Segmentation Decathlon Task04_Hippocampus (Vanderbilt University Medical Center; "
    "Simpson et al. 2019, arXiv:1902.09063), CC BY-SA 4.0, "
    "via udacity/nd320-c3-3d-imaging-starter; "
    "trained on the 188 'train' cases of shared/data/hippocampus/splits.json (seed 20261127), "
    "settings chosen on the 20 'val' cases"
)
OPENKBP = (
    "OpenKBP head-and-neck CT with clinical organ-at-risk contours (AAPM 2020 challenge; "
    "Babier et al., Med. Phys. 48:5549, 2021; github.com/ababier/open-kbp, MIT licence), whose "
    "images come from The Cancer Imaging Archive head-and-neck collections (Clark et al., "
    "J Digit Imaging 2013) under those collections' own terms, not stated per patient; "
    "trained on the 166 'train' cases of shared/data/openkbp/splits.json (original OpenKBP "
    "split), settings chosen on the 32 'val' cases"
)
DATA_ATTRIBUTION = {
    "hippocampus": HIPPOCAMPUS,
    "openkbp": OPENKBP,
    "universal": f"{OPENKBP}. {HIPPOCAMPUS}",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--licence", default="CC-BY-SA-4.0")
    parser.add_argument("--recipe", default="train/recipes/hippocampus.toml")
    parser.add_argument("--data", choices=sorted(DATA_ATTRIBUTION), default="hippocampus")
    parser.add_argument("--data-text", help="attribution sentence instead of --data's")
    args = parser.parse_args()
    model = load_checkpoint(args.checkpoint)
    meta = dict(model.metadata)
    for key in ("format_version", "model_config", "task_ids", "task_chunks", "modalities",
                "task_groups", "preprocess", "hermes_version"):  # fmt: skip
        meta.pop(key, None)
    path = save_checkpoint(
        model,
        args.out,
        preprocess=PreprocessConfig.from_dict(model.metadata["preprocess"]),
        task_groups=model.metadata["task_groups"],
        half=True,
        **{
            **meta,
            "name": args.name,
            "licence": args.licence,
            "recipe": args.recipe,
            "data": args.data_text or DATA_ATTRIBUTION[args.data],
            "exported_from": args.checkpoint.name,
        },  # fmt: skip
    )
    print(f"{path}  {path.stat().st_size / 1e6:.2f} MB  sha256 {sha256_file(path)}")


if __name__ == "__main__":
    main()
