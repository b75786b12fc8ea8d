"""``labelblocks learn ...``: blocks trained on the project's own samples."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from ._util import (
    AppContext,
    Progress,
    build_filter,
    filter_given,
    filter_options,
    parse_key_values,
    pass_app,
    print_json,
)


@click.group("learn")
def learn_group() -> None:
    """Learn blocks: models trained on the project's samples (an anomaly scorer)."""


@learn_group.command("anomaly")
@click.option("--features", default="image-embedding", show_default=True,
              help="The feature extractor (`labelblocks learn extractors`): image-embedding, audio-embedding, "
                   "audio-spectral, or a plugin's.")
@click.option("-f", "--feature-param", "feature_params", multiple=True, metavar="PARAM=VALUE",
              help="A parameter of the extractor (model=DIR, window-ms=500, ...).")
@click.option("--clusters", type=click.IntRange(min=1), default=32, show_default=True, help="K-means clusters.")
@click.option("--axes", default=None, metavar="SPEC", help="Feature indices to use, e.g. 0-15,20 (default: all).")
@click.option("--name", default="", help="A name to tell it apart.")
@click.option("--anomaly-label", default="anomaly", show_default=True,
              help="Validation samples with this label are anomalies (the others normal) when suggesting the "
                   "threshold.")
@filter_options(include_disabled_default=False)
@click.option("--json", "as_json", is_flag=True, help="Print the learn block as JSON.")
@pass_app
def learn_anomaly(app: AppContext, features: str, feature_params: tuple[str, ...], clusters: int, axes: str | None,
                  name: str, anomaly_label: str, as_json: bool, **kw: Any) -> None:
    """Train an anomaly block (StandardScaler + K-means over the samples' features) on the
    training samples of the selection; validation and testing samples score its threshold.
    Features are cached per file: an interrupted training resumes, and training again (other
    --clusters, --axes) computes none.

    \b
    Examples:
      labelblocks learn anomaly --clusters 16 --where site=Paris
      labelblocks learn anomaly --features audio-spectral -f window-ms=500
      labelblocks actions create outliers --step anomaly -p learn-id=1
    """
    from ..learn import train_anomaly

    f = build_filter(kw) if filter_given(kw) else None
    progress = Progress(not as_json)
    try:
        record = train_anomaly(app.store, features, parse_key_values(feature_params, "-f"), clusters, axes, f,
                               name, anomaly_label, on_progress=progress)
    finally:
        progress.close()
    if as_json:
        print_json(record.summary() | {"metadata": record.metadata})
        return
    t = record.metadata["thresholds"][0]
    failed = record.params.get("failed") or {}
    click.echo(f"Learn block {record.id} ({record.name}): {len(record.training)} training samples, "
               f"{len(record.model['clusters'])} clusters over {len(record.model['axes'])} feature values; "
               f"{record.params.get('computed', 0)} files' features computed (the rest cached).")
    click.echo(f"Suggested min-anomaly-score: {t['suggestedValueText']}")
    if failed:
        click.echo(f"{len(failed)} samples could not be read and were left out: "
                   + "; ".join(f"{sid}: {why}" for sid, why in list(failed.items())[:5]), err=True)
    click.echo(f"Use it: labelblocks actions create outliers --step anomaly -p learn-id={record.id}")


@learn_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def learn_list(app: AppContext, as_json: bool) -> None:
    """The project's learn blocks."""
    from ..store.learn import list_learn

    records = list_learn(app.store)
    if as_json:
        print_json([r.summary() for r in records])
        return
    if not records:
        click.echo("No learn block yet: train one with `labelblocks learn anomaly`.")
    for r in records:
        when = datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M")
        click.echo(f"{r.id:>4}  {r.kind:<8} {r.name:<32} {r.extractor.get('name', ''):<16} "
                   f"{len(r.training):>7} samples  {when}")


@learn_group.command("show")
@click.argument("learn_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the protocol's metadata document as JSON.")
@pass_app
def learn_show(app: AppContext, learn_id: int, as_json: bool) -> None:
    """A learn block: what it was trained on, its clusters and suggested threshold."""
    from ..store.learn import get_learn

    r = get_learn(app.store, learn_id)
    if as_json:
        print_json(r.summary() | {"metadata": r.metadata})
        return
    click.echo(f"Learn block {r.id}: {r.name} ({r.kind})")
    click.echo(f"  features: {r.extractor.get('name')} {r.extractor.get('parameters')}")
    click.echo(f"  trained on {len(r.training)} samples; {len(r.model['clusters'])} clusters; axes "
               f"{r.params.get('axes') or 'all'} of {r.params.get('dim')}")
    for t in r.metadata.get("thresholds", []):
        click.echo(f"  {t['key']}: {t['suggestedValueText']}")
    m = r.metadata.get("modelValidationMetrics", [{}])[0]
    if m.get("predictions"):
        click.echo(f"  validation: {len(m['predictions'])} samples scored"
                   + (f", accuracy {m['accuracy']:.1%}" if m.get("confusionMatrix") else ""))


@learn_group.command("delete")
@click.argument("learn_id", type=int)
@pass_app
def learn_delete(app: AppContext, learn_id: int) -> None:
    """Delete a learn block (cached features stay, for the next training)."""
    from ..store.learn import delete_learn

    delete_learn(app.store, learn_id)
    click.echo(f"Deleted learn block {learn_id}.")


@learn_group.command("features")
@click.argument("learn_id", type=int)
@click.argument("sample_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def learn_features(app: AppContext, learn_id: int, sample_id: int, as_json: bool) -> None:
    """A sample's features as the learn block computes them (every value, per window), and
    its scores: apply the served scale, mean, clusters and axes to reproduce them."""
    from ..learn import load

    model = load(app.store, learn_id)
    s = app.store.get_sample(sample_id)
    from ..learn import compute_features

    got = compute_features(app.store, model.extractor(), [(s.id, s.content_hash)])
    if s.id in got.failed:
        from ..errors import InvalidInput

        raise InvalidInput(f"sample {sample_id}: {got.failed[s.id]}")
    vectors = got.vectors[s.id]
    scores = model.model.scores(vectors)
    doc = {"learnId": learn_id, "sampleId": sample_id, "features": vectors.tolist(),
           "windowScores": scores.tolist(), "anomalyScore": float(scores.max())}
    if as_json:
        print_json(doc)
        return
    click.echo(f"Sample {sample_id}: {len(vectors)} window(s) of {vectors.shape[1]} values; anomaly score "
               f"{doc['anomalyScore']:.4f}")


@learn_group.command("extractors")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def learn_extractors(as_json: bool) -> None:
    """The feature extractors plugins registered."""
    from ..plugins import get_plugins

    found = get_plugins().extractors()
    rows: list[dict[str, Any]] = [{"name": n, "modality": c.modality, "description": c.description,
                                   "parameters": dict(c.parameters)} for n, c in sorted(found.items())]
    if as_json:
        print_json(rows)
        return
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in dict(r["parameters"]).items())
        click.echo(f"{r['name']:<18} {r['modality']:<6} {r['description']}" + (f"  [{params}]" if params else ""))


def register(group: click.Group) -> None:
    group.add_command(learn_group)
