"""Training: dataset cards, recipes, the preprocessing cache, mixed-batch sampling,
augmentation, losses and optimisers. Import the submodules you need; none is imported here, so
that reading a recipe or a card does not import torch."""
