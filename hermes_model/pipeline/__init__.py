"""A scan's way through the model, one module per step, in the data's order.

``checks``         which modality a scan is, and whether its values can be segmented
``preprocess``     reorient, resample, normalise; and back (``restore``)
``group_spacing``  one prepared grid per task group when groups were trained at their own spacing
``windows``        sliding windows, task groups, background skipping, Gaussian stitching
``segmenter``      ``Segmenter``: weights loaded once, every step above run for each scan
``postprocess``    probabilities back on the input grid, label map, legend, stats
``preview``        the PNG of a case: three slices around the masks
``components``     largest connected component, per task as the weights recorded it
``ood``            is this scan like the training scans of the group that segments it?
``result``         ``SegmentationResult``: what a segmentation returns
"""
