"""Example data, generated (no network, nothing downloaded): images from two sites in pairs of
near-identical frames of one "video", with labels, boxes (a few of them tiny specks) and
metadata in the protocol's info.labels; and short audio clips (tones and noise) from two
microphones. What ``labelblocks demo`` labels, and what the README's commands run on."""

from __future__ import annotations

import json
from pathlib import Path

IMAGES = 24
AUDIO = 6


def make_example_data(dest: Path) -> tuple[Path, Path]:
    """Write the example images with ``dest/images/info.labels``, and the audio clips under
    ``dest/audio/``. Returns (the info.labels path, the audio folder)."""
    import numpy as np
    import soundfile as sf
    from PIL import Image, ImageDraw

    images = dest / "images"
    images.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(IMAGES // 2):
        site = "Paris" if i < IMAGES // 4 else "Lyon"
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
            img.save(images / name)
            files.append({
                "path": name, "category": "training", "label": {"type": "label", "label": label},
                "metadata": {"site": site, "video_file": f"video{i:02d}.mp4"},
                "boundingBoxes": boxes,
            })
    info = images / "info.labels"
    info.write_text(json.dumps({"version": 1, "files": files}, indent=1))
    audio = dest / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rate = 16_000
    t = np.arange(2 * rate) / rate
    for i in range(AUDIO):
        if i % 2 == 0:  # a tone: beep
            clip, name = 0.3 * np.sin(2 * np.pi * (440 + 110 * i) * t), f"beep.{i:02d}.wav"
        else:
            clip, name = 0.1 * rng.standard_normal(t.size), f"noise.{i:02d}.wav"
        sf.write(audio / name, clip.astype("float32"), rate, subtype="PCM_16")
    return info, audio
