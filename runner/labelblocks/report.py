"""The HTML report of an evaluation (``labelblocks evaluate --report DIR``): one self-contained
``index.html`` (its PNG plots embedded, also written beside it) with the confusion matrix as a
heatmap, per-group metric bars with their 95% intervals, the precision-recall curve of each
suggested threshold with the suggestion marked, and the worst samples drawn with truth and
prediction. Plots are drawn by matplotlib, headless.

Written into a new folder beside DIR and renamed into place: an earlier report in DIR is
replaced whole, a failure leaves it as it was."""

from __future__ import annotations

import base64
import html
import io
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from .errors import InvalidInput
from .evaluate import BACKGROUND, Evaluation
from .store import Store

MARKER = '<meta name="generator" content="labelblocks evaluate --report">'
THUMB = 320  # px, the longer side of a worst sample's picture


def write_report(store: Store, ev: Evaluation, folder: Path) -> Path:
    """Write the report into ``folder`` (absent, empty, or holding an earlier report);
    returns the path of its index.html."""
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not _is_report(folder))):
        raise InvalidInput(f"--report {folder}: exists and is neither empty nor an earlier report: choose a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = folder.parent / f".{folder.name[:100]}.report-{secrets.token_hex(4)}"
    work.mkdir()
    try:
        _write(store, ev, work)
        if folder.exists():
            old = folder.parent / f".{folder.name[:100]}.old-{secrets.token_hex(4)}"
            os.replace(folder, old)
            os.replace(work, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return folder / "index.html"


def _is_report(folder: Path) -> bool:
    index = folder / "index.html"
    try:
        return index.is_file() and MARKER in index.read_text(encoding="utf-8", errors="replace")[:2000]
    except OSError:
        return False


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, folder: Path, name: str, pngs: dict[str, bytes]) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    pngs[name] = buf.getvalue()
    (folder / name).write_bytes(pngs[name])


def _img(pngs: dict[str, bytes], name: str, alt: str) -> str:
    data = base64.b64encode(pngs[name]).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" title="{html.escape(name)}">'


def confusion_plot(doc: dict[str, Any], folder: Path, pngs: dict[str, bytes]) -> None:
    import numpy as np

    plt = _plt()
    classes = doc["classes"]
    cm = np.asarray(doc["modelValidationMetrics"][0]["confusionMatrix"], dtype=float)
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    fmt = "{:.1f}" if doc["task"] == "segments" else "{:.0f}"
    if len(classes) <= 30:
        for (r, c), v in np.ndenumerate(cm):
            ax.text(c, r, fmt.format(v), ha="center", va="center",
                    color="white" if v > cm.max() / 2 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, label="seconds" if doc["task"] == "segments" else "count")
    ax.set_title("confusion matrix")
    _save(fig, folder, "confusion.png", pngs)


def group_plot(doc: dict[str, Any], group: dict[str, Any], index: int, folder: Path, pngs: dict[str, bytes]) -> str:
    plt = _plt()
    metric, interval = ("mAP50", "mAP50Interval") if doc["task"] == "boxes" else ("accuracy", "accuracyInterval")
    values = group["values"]
    names = [str(v["value"]) for v in values]
    y = [v[metric] for v in values]
    err = [[v[metric] - v[interval][0] for v in values], [v[interval][1] - v[metric] for v in values]]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(values) + 2), 3.5))
    colors = ["#bbbbbb" if v["tooSmall"] else "#3b75af" for v in values]
    ax.bar(range(len(values)), y, yerr=err, capsize=3, color=colors)
    ax.set_xticks(range(len(values)), names, rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by {group['key']} (worst first; grey: too few samples; bars: 95% interval)")
    name = f"group-{index}.png"
    _save(fig, folder, name, pngs)
    return name


def curve_plot(curve: Any, index: int, folder: Path, pngs: dict[str, bytes], suggested: bool = True) -> str:
    """The curve, with its suggestion marked (``suggested`` False: the item has none)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(curve.recall, curve.precision, marker=".", markersize=3, label="over the recorded scores")
    if suggested:
        at = curve.thresholds.index(curve.suggested)
        ax.plot([curve.recall[at]], [curve.precision[at]], "o", color="crimson",
                label=f"suggested threshold (keeps scores from {curve.suggested:.3f})")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"{curve.key}: precision-recall over the score threshold")
    ax.legend(loc="lower left")
    name = f"pr-{index}.png"
    _save(fig, folder, name, pngs)
    return name


def _image_thumb(store: Store, sample_id: int, truth: list[dict[str, Any]], prediction: list[dict[str, Any]]) -> bytes:
    from PIL import Image, ImageDraw

    sample = store.get_sample(sample_id)
    with Image.open(store.blob_path(sample)) as opened:
        rgb = opened.convert("RGB")
    scale = THUMB / max(rgb.size)
    im = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))))
    draw = ImageDraw.Draw(im)
    for boxes, color in ((truth, (40, 170, 60)), (prediction, (220, 40, 40))):
        for b in boxes:
            xy = [b["x"] * scale, b["y"] * scale, (b["x"] + b["width"]) * scale, (b["y"] + b["height"]) * scale]
            draw.rectangle(xy, outline=color, width=2)
            draw.text((xy[0] + 2, xy[1] + 1), str(b["label"])[:20], fill=color)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _timeline(w: dict[str, Any]) -> Any:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 1.4))
    labels = sorted({s["label"] for s in (*w["truth"], *w["prediction"])})
    colors = {lab: plt.cm.tab10(i % 10) for i, lab in enumerate(labels)}
    for row, segs in ((1, w["truth"]), (0, w["prediction"])):
        for s in segs:
            start, end = s["startIndex"] / w["frequency"], (s["endIndex"] + 1) / w["frequency"]
            ax.broken_barh([(start, end - start)], (row - 0.4, 0.8), color=colors[s["label"]])
    ax.set_yticks([0, 1], ["prediction", "truth"])
    ax.set_xlabel("seconds")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[lab]) for lab in labels]
    ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def worst_samples(store: Store, ev: Evaluation, folder: Path, pngs: dict[str, bytes]) -> list[str]:
    doc = ev.document
    out = []
    for n, w in enumerate(ev.worst):
        name = f"worst-{n + 1:02d}.png"
        try:
            if doc["task"] == "segments":
                _save(_timeline(w), folder, name, pngs)
            elif doc["task"] == "boxes":
                pngs[name] = _image_thumb(store, w["sampleId"], w["truth"], w["prediction"])
                (folder / name).write_bytes(pngs[name])
            else:
                pngs[name] = _image_thumb(store, w["sampleId"], [], [])
                (folder / name).write_bytes(pngs[name])
            picture = _img(pngs, name, f"sample {w['sampleId']}")
        except (OSError, ValueError) as e:  # not an image (a label on audio), or its file is gone
            picture = f"<div class=missing>{html.escape(type(e).__name__)}: no picture</div>"
        if doc["task"] == "single-label":
            caption = f"truth <b>{html.escape(w['truth'])}</b>, predicted <b>{html.escape(w['prediction'])}</b>"
        elif doc["task"] == "boxes":
            caption = (f"F1 {w['score']:.2f}: {len(w['truth'])} true (green), {len(w['prediction'])} predicted "
                       "(red)")
        else:
            caption = f"accuracy over time {w['score']:.0%}"
        out.append(f"<figure>{picture}<figcaption>sample {w['sampleId']}: {caption}</figcaption></figure>")
    return out


def _report_table(report: dict[str, Any], classes: list[str]) -> str:
    rows = []
    for c in [*classes, "macro avg", "weighted avg"]:
        r = report.get(c)
        if isinstance(r, dict):
            rows.append(f"<tr><td>{html.escape(c)}</td><td>{r['precision']:.3f}</td><td>{r['recall']:.3f}</td>"
                        f"<td>{r['f1-score']:.3f}</td><td>{r['support']:g}</td></tr>")
    return ("<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
            + "".join(rows) + "</table>")


def _group_table(doc: dict[str, Any], group: dict[str, Any]) -> str:
    metric, interval = ("mAP50", "mAP50Interval") if doc["task"] == "boxes" else ("accuracy", "accuracyInterval")
    rows = []
    for v in group["values"]:
        lo, hi = v[interval]
        small = " (too few to tell)" if v["tooSmall"] else ""
        rows.append(f"<tr><td>{html.escape(str(v['value']))}</td><td>{v['samples']}</td>"
                    f"<td>{v[metric]:.3f}</td><td>[{lo:.3f}, {hi:.3f}]{small}</td></tr>")
    return (f"<table><tr><th>{html.escape(group['key'])}</th><th>samples</th><th>{metric}</th>"
            "<th>95% interval</th></tr>" + "".join(rows) + "</table>")


def _write(store: Store, ev: Evaluation, folder: Path) -> None:
    doc = ev.document
    item = doc["modelValidationMetrics"][0]
    pngs: dict[str, bytes] = {}
    confusion_plot(doc, folder, pngs)
    parts = [f"<h1>Evaluation of job {doc['jobId']}</h1>",
             f"<p>{doc['samples']} samples ({html.escape(doc['task'])}), compared with "
             f"{html.escape(doc['comparedWith'])}."
             + (f" Created {html.escape(str(doc['created']))}." if doc.get("created") else "") + "</p>"]
    if doc["task"] == "boxes":
        figures = "".join(f"<tr><td>{html.escape(m['name'])}</td><td>{m['fullPrecisionValue']:.3f}</td></tr>"
                          for m in item["additionalMetrics"])
        parts.append(f"<h2>COCO figures</h2><table>{figures}</table>")
    else:
        parts.append(f"<p class=big>accuracy {item['accuracy']:.1%}</p>")
    if doc["notEvaluated"]:
        parts.append(f"<p>The job also changes {html.escape(', '.join(doc['notEvaluated']))}: not evaluated here.</p>")
    classes = [c for c in doc["classes"] if c != BACKGROUND]
    parts += ["<h2>Confusion matrix</h2>", _img(pngs, "confusion.png", "confusion matrix"),
              "<h2>Per class</h2>", _report_table(item["report"], classes)]
    for i, g in enumerate(doc["groups"]):
        name = group_plot(doc, g, i + 1, folder, pngs)
        parts += [f"<h2>By {html.escape(g['key'])}</h2>", _img(pngs, name, f"by {g['key']}"), _group_table(doc, g)]
    if ev.curves:
        parts.append("<h2>Score thresholds</h2>")
        by_key = {t["key"]: t for t in doc["thresholds"]}
        for i, curve in enumerate(ev.curves):
            t = by_key.get(curve.key, {})
            name = curve_plot(curve, i + 1, folder, pngs, suggested=not t.get("noSuggestion"))
            how = f"<code>{html.escape(t['command'])}</code>" if t.get("command") else ""
            parts.append(f"<figure>{_img(pngs, name, curve.key)}<figcaption>{html.escape(curve.key)}: "
                         f"{html.escape(t.get('suggestedValueText', ''))} {how}</figcaption></figure>")
    worst = worst_samples(store, ev, folder, pngs)
    if worst:
        parts += [f"<h2>The {len(worst)} worst samples</h2>", "<div class=grid>", *worst, "</div>"]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{MARKER}
<title>labelblocks: evaluation of job {doc['jobId']}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.big {{ font-size: 1.5em; }} .grid {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ margin: 0; max-width: 340px; }} figcaption {{ font-size: 0.85em; }}
.missing {{ width: 320px; height: 80px; background: #eee; }} img {{ max-width: 100%; }}
</style></head><body>
{chr(10).join(parts)}
</body></html>
"""
    (folder / "index.html").write_text(page, encoding="utf-8")
