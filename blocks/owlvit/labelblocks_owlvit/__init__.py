"""OWL-ViT zero-shot bounding boxes for labelblocks."""
