"""Datasets in their publishers' layouts, the prepared layout, loaders (DALI and torch) and augmentations."""
