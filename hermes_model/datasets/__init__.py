"""Labelled datasets as training and evaluation see them.

``cards``       dataset cards (TOML): where the images and labels are, the splits, the tasks
``annotation``  partial annotation: which tasks each case was contoured for
"""
