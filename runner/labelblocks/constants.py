"""The few values the command line shows in its options' help (choices, defaults), kept apart
from the modules that use them so that ``labelblocks --help`` imports nothing heavy."""

from __future__ import annotations

# where an upload puts files: a category, or "split" (80/20 training/testing by content hash)
UPLOAD_CATEGORIES = ("training", "validation", "testing", "split")

# the largest image accepted, in pixels (width x height); `upload --max-pixels` and
# `serve --max-pixels` change it. Checked from the header, before anything is decoded.
MAX_IMAGE_PIXELS = 178_956_970

# what `labelblocks export` writes
EXPORT_FORMATS = ("info", "coco", "yolo")
