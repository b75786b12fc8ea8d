"""Write the example dataset (no network needed): 24 images from two sites, in pairs of
near-duplicate frames of one "video", with an info.labels of labels, metadata and boxes (a
few of them tiny specks), and 6 short audio clips.

    python examples/make_dataset.py example-data
    labelblocks upload --info-file example-data/images/info.labels
    labelblocks upload example-data/audio --metadata device=mic1
"""

from __future__ import annotations

import sys
from pathlib import Path

from labelblocks.examples import make_example_data

if __name__ == "__main__":
    info, audio = make_example_data(Path(sys.argv[1] if len(sys.argv) > 1 else "example-data"))
    print(f"wrote {info} (images) and {audio}")
