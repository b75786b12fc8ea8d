"""Write a small example dataset (no network needed): 24 images from two sites, in pairs of
near-duplicate frames of one "video", plus an info.labels with labels, metadata and boxes
(a few of them tiny specks).

    python examples/make_dataset.py example-data
    labelblocks upload --info-file example-data/info.labels
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw


def main(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(12):
        site = "Paris" if i < 6 else "Lyon"
        label = "circle" if i % 2 else "square"
        for frame in range(2):  # two near-identical frames of one "video"
            img = Image.new("RGB", (160, 120), (30 + 15 * i, 60, 90))
            d = ImageDraw.Draw(img)
            x, y = 20 + 6 * i + frame, 20 + 3 * i
            box = [x, y, x + 50, y + 40]
            (d.ellipse if label == "circle" else d.rectangle)(box, fill=(230, 200, 40))
            boxes = [{"label": label, "x": x, "y": y, "width": 50, "height": 40}]
            if i % 3 == 0:  # a speck too small to matter (0.2% of the image)
                d.rectangle([130, 90, 136, 96], fill=(200, 200, 200))
                boxes.append({"label": "speck", "x": 130, "y": 90, "width": 6, "height": 6})
            name = f"{label}.{i:02d}.{frame}.png"
            img.save(dest / name)
            files.append({
                "path": name, "category": "training", "label": {"type": "label", "label": label},
                "metadata": {"site": site, "video_file": f"video{i:02d}.mp4"},
                "boundingBoxes": boxes,
            })
    (dest / "info.labels").write_text(json.dumps({"version": 1, "files": files}, indent=1))
    print(f"wrote {len(files)} images and {dest / 'info.labels'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "example-data"))
