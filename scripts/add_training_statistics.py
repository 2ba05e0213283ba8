"""Add training statistics (for out-of-distribution warnings) to an existing checkpoint.

``hermes train`` records them itself; this is for checkpoints written before it did, and for
imported ones whose training data you have.

    python scripts/add_training_statistics.py hermes_model/assets/hippocampus-hermes-r.safetensors \
        --card hippocampus=train/datasets/hippocampus.toml [--split train] [--out FILE]

Each ``--card GROUP=CARD.toml`` computes ``hermes_model.pipeline.ood.training_statistics`` over the
card's split and stores it as the group's entry under the metadata key ``training_statistics`` (see
``hermes_model/pipeline/ood.py``). Every tensor is copied byte for byte (checked after writing);
only the metadata changes, so the sha256 changes: the new one is printed, for weights.toml.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hermes_model.datasets.cards import load_card
from hermes_model.pipeline import ood
from hermes_model.weights.checkpoint import (
    read_metadata,
    replace_metadata,
    sha256_file,
    tensor_digest,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--card", action="append", required=True, metavar="GROUP=CARD.toml")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", type=Path, help="default: rewrite the checkpoint in place")
    args = parser.parse_args()
    doc = read_metadata(args.checkpoint)
    groups = doc.get("task_groups", {})
    mr_percentiles = doc.get("preprocess", {}).get("mr_percentiles", (2.0, 98.0))
    statistics = dict(doc.get(ood.KEY, {}))
    for spec in args.card:
        group, _, card_path = spec.partition("=")
        if group not in groups or not card_path:
            sys.exit(f"--card {spec!r}: use GROUP=CARD.toml with a group of {sorted(groups)}")
        card = load_card(card_path)
        statistics[group] = ood.training_statistics(card, args.split, mr_percentiles)
        print(f"{group}: {statistics[group]['cases']} {args.split} cases of {card.name}")
    before = tensor_digest(args.checkpoint)
    out = replace_metadata(
        args.checkpoint, args.out or args.checkpoint, {**doc, ood.KEY: statistics}
    )
    after = tensor_digest(out)
    if before != after:
        sys.exit(f"{out}: tensors changed while rewriting the metadata; do not use this file")
    print(f"{out}  tensors bit-identical  sha256 {sha256_file(out)}")


if __name__ == "__main__":
    main()
