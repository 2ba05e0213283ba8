"""One request, several weights files: ``--tasks`` without ``--weights``.

``RoutedSegmenter`` asks ``weights.routing`` which registered weights segment each requested
task (with the scan's modality, since aliases depend on it), reads the scan once, runs one
``Segmenter`` per weights file on its tasks (each at its own preprocessing, as group spacing
already allows), and merges the results into one: one label map with the precedence of
``postprocess`` (a tumour over its organ, else the more probable task, with every weights
file's float16 probabilities), one legend whose labels name the weights that made them. Each
weights file is loaded once, on first use, and kept for the next scans of a batch.

A request served by one weights file gives exactly what ``Segmenter(those weights)`` gives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from hermes_model.errors import OutOfDistributionError
from hermes_model.pipeline.postprocess import label_map_from
from hermes_model.pipeline.result import SegmentationResult
from hermes_model.pipeline.segmenter import ImageInput, Segmenter, load_scan
from hermes_model.weights.routing import Route, candidates, route_tasks

__all__ = ["RoutedSegmenter", "merge_results"]

Progress = Callable[[int, int], None]


class RoutedSegmenter:
    """Segment named tasks with whichever registered weights have them.

    Args:
        tasks: the default request (task ids or aliases) for ``segment`` calls without one.
        **options: ``Segmenter`` keyword arguments (device, overlap, batch size, engine, ...),
            used for every weights file.

    Raises TaskError at construction for a name that no usable weights have (checked without
    a modality; each scan is routed again with its own).
    """

    def __init__(self, tasks: Sequence[str], **options: Any) -> None:
        self.tasks = list(tasks)
        self.options = options
        self.loaded: dict[str, Segmenter] = {}
        self.pool = candidates()  # the registry, read once for the whole batch
        route_tasks(self.tasks, pool=self.pool)

    def segmenter(self, route: Route) -> Segmenter:
        """The ``Segmenter`` of ``route``'s weights, loaded on first use."""
        name = route.entry.name
        if name not in self.loaded:
            self.loaded[name] = Segmenter(name, **self.options)
        return self.loaded[name]

    @property
    def weights(self) -> dict[str, str]:
        """The weights loaded so far, joined: ``{"name": "a + b", "sha256": ..., ...}``."""
        used = [s.weights for s in self.loaded.values()]
        keys = ("name", "sha256", "source")
        return {k: " + ".join(w[k] for w in used) for k in keys} if used else {}

    @property
    def runtime(self) -> dict[str, str]:
        """Engine, precision and device of the weights loaded so far (``a + b`` where they
        differ)."""
        keys = ("engine", "precision", "device")
        values = {k: list(dict.fromkeys(s.runtime[k] for s in self.loaded.values())) for k in keys}
        return {k: " + ".join(v) for k, v in values.items() if v}

    def select_tasks(
        self, names: Sequence[str] | None, modality: str | None
    ) -> tuple[list[str], list[str]]:
        """(task ids, warnings) as ``Segmenter.select_tasks``: every name routed to weights."""
        routes = route_tasks(list(names or self.tasks), modality, self.pool)
        return [t for r in routes for t in r.task_ids], []

    def segment(
        self,
        image: ImageInput,
        tasks: Sequence[str] | None = None,
        modality: str | None = None,
        *,
        probabilities: bool = True,
        progress: Progress | None = None,
    ) -> SegmentationResult:
        """Segment one scan (arguments as ``Segmenter.segment``); the image is read once. A
        weights file whose task groups all withhold their masks (``ood``) leaves the others';
        OutOfDistributionError when none is left."""
        array, meta, modality, confidence, read = load_scan(image, modality)
        routes = route_tasks(list(tasks or self.tasks), modality, self.pool)
        several = len(routes) > 1
        results, refused = [], []
        for route in routes:
            try:
                results.append(
                    self.segmenter(route).segment(
                        (array, meta),
                        list(route.task_ids),
                        modality,
                        probabilities=probabilities or several,
                        progress=progress,
                    )  # fmt: skip
                )
            except OutOfDistributionError as error:
                refused.append(error)
        lines = [line for error in refused for line in error.lines]
        if not results:
            raise OutOfDistributionError(lines, [t for error in refused for t in error.tasks])
        merged = merge_results(results, keep_probabilities=probabilities)
        if not probabilities:
            merged.probabilities = None
        merged.out_of_distribution += lines
        merged.warnings += lines
        merged.withheld += [t for error in refused for t in error.tasks]
        merged.modality_confidence = confidence
        merged.timings["read"] = read
        return merged


def merge_results(
    results: Sequence[SegmentationResult], *, keep_probabilities: bool = True
) -> SegmentationResult:
    """One result from the results of several weights files on one scan (one result: itself).

    Tasks keep their order (first result first); the label map is recomputed from every mask
    and float16 probability with ``postprocess``'s precedence; warnings are de-duplicated,
    timings added up per stage.
    """
    if len(results) == 1:
        return results[0]
    parts = [r.to("cpu") for r in results]
    if any(r.probabilities is None for r in parts):
        raise ValueError("merging needs every result's probabilities (segment(probabilities=True))")
    task_ids = [t for r in parts for t in r.task_ids]
    masks = torch.cat([r.masks for r in parts])
    probabilities = torch.cat([r.probabilities for r in parts if r.probabilities is not None])
    timings: dict[str, float] = {}
    for r in parts:
        for stage, seconds in r.timings.items():
            timings[stage] = timings.get(stage, 0.0) + seconds
    first = parts[0]
    return SegmentationResult(
        task_ids=task_ids,
        masks=masks,
        label_map=label_map_from(masks, probabilities, task_ids),
        probabilities=probabilities if keep_probabilities else None,
        volumes_ml={k: v for r in parts for k, v in r.volumes_ml.items()},
        voxel_counts={k: v for r in parts for k, v in r.voxel_counts.items()},
        modality=first.modality,
        modality_confidence=first.modality_confidence,
        meta=first.meta,
        warnings=list(dict.fromkeys(w for r in parts for w in r.warnings)),
        timings=timings,
        weights={k: " + ".join(r.weights.get(k, "") for r in parts) for k in first.weights},
        windows=sum(r.windows for r in parts),
        skipped_windows=sum(r.skipped_windows for r in parts),
        largest_component=[t for r in parts for t in r.largest_component],
        sources=[s for r in parts for s in r.sources],
        out_of_distribution=[line for r in parts for line in r.out_of_distribution],
        withheld=[t for r in parts for t in r.withheld],
    )
