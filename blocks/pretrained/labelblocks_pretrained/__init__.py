"""Image labeling with pretrained models: a labelblocks block distribution."""
