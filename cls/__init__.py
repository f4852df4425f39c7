"""cls: batch image-classification experiments."""
