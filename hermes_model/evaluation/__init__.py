"""Scoring masks against ground truth.

``definitions``  what each metric means (HD95 and surface Dice conventions), in one place
``metrics``      Dice, HD95 and surface Dice of one case, on the original image grid
``evaluate``     the engine of ``hermes evaluate``: a folder of predictions, or weights on a split
"""
