"""Learn blocks: models trained on the project's own samples (`labelblocks learn`).

The anomaly learn block: features per sample (a registered feature extractor, cached per
file content and extractor, so training again computes nothing new), scikit-learn's
StandardScaler and KMeans (fixed seed), each cluster's ``maxError`` the largest distance of
its training members to its centre in scaled space, and the anomaly score of a vector the
smallest, over clusters, of (distance to the centre - maxError): below 0 inside a cluster.
A sample with several windows scores the largest of its windows' scores. Its metadata has the
protocol's shape (``scale``, ``mean``, ``clusters``, ``axes``, ``thresholds``,
``modelValidationMetrics``) and is what `labelblocks serve` answers for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from .errors import InvalidInput, NotFound
from .extractors import FeatureExtractor
from .filters import SampleFilter
from .store import Store
from .store import learn as learn_store

ProgressFn = Callable[[str, int, int], None]
DEFAULT_CLUSTERS = 32
SUGGEST_PERCENTILE = 99.0
ANOMALY, NORMAL = "anomaly", "normal"


def extractor(name: str, params: Mapping[str, str] | None = None) -> FeatureExtractor:
    from .plugins import get_plugins

    found = get_plugins().extractors()
    if name not in found:
        raise NotFound(f"no feature extractor named {name!r} (there are: {', '.join(sorted(found)) or 'none'})")
    try:
        return found[name](params)
    except ValueError as e:
        raise InvalidInput(str(e)) from None


def parse_axes(spec: str | None, dim: int) -> list[int]:
    """``0,3,8-15`` to feature indices (the protocol's axes); all of them when empty."""
    if not spec:
        return list(range(dim))
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                out.extend(range(a, b + 1))
            elif part:
                out.append(int(part))
        except ValueError:
            raise InvalidInput(f"--axes: expected indices such as 0,3,8-15, got {spec!r}") from None
    bad = [a for a in out if not 0 <= a < dim]
    if bad or not out:
        raise InvalidInput(f"--axes: indices from 0 to {dim - 1} (the features have {dim} values), got {spec!r}")
    return sorted(set(out))


@dataclass
class Extracted:
    """Per sample id, its features [windows, dim]; and the samples that failed, with why."""

    vectors: dict[int, np.ndarray] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    computed: int = 0  # files computed now (not from the cache)


def compute_features(store: Store, ex: FeatureExtractor, rows: Sequence[tuple[int, str]],
                     on_progress: ProgressFn | None = None) -> Extracted:
    """Features of ``rows`` ((sample id, content hash)): from the cache, the rest computed in
    the extractor's batches, each batch cached as it is done (an interrupted run resumes
    where it stopped)."""
    key = ex.key()
    out = Extracted()
    cached = learn_store.cached_features(store, key, [h for _, h in rows])
    todo = list(dict.fromkeys(h for _, h in rows if h not in cached))
    errors: dict[str, str] = {}
    if todo:
        from concurrent.futures import ThreadPoolExecutor

        ex.ready()

        def prepare(chunk: list[str]) -> Any:
            datas = []
            for h in chunk:
                try:
                    datas.append(store.blobs.path(h).read_bytes())
                except OSError as e:
                    datas.append(b"")
                    errors[h] = f"cannot read the file: {e}"
            return ex.prepare(datas)

        # a small first batch: the model starts on it while the next whole batch is prepared,
        # instead of waiting for a whole batch to be read and decoded with nothing else to do
        first = max(1, ex.batch_size // 4)
        chunks = [todo[:first], *(todo[i : i + ex.batch_size] for i in range(first, len(todo), ex.batch_size))]
        ahead = ThreadPoolExecutor(1, thread_name_prefix="labelblocks-features")
        pending = ahead.submit(prepare, chunks[0])
        finished = 0
        for k, chunk in enumerate(chunks):
            prepared = pending.result()
            if k + 1 < len(chunks):  # the next batch is read and prepared while this one runs
                pending = ahead.submit(prepare, chunks[k + 1])
            results = ex.run(prepared)
            done: dict[str, np.ndarray] = {}
            for h, r in zip(chunk, results, strict=True):
                if h in errors:
                    continue
                if isinstance(r, Exception):
                    errors[h] = f"{type(r).__name__}: {r}"
                else:
                    done[h] = np.asarray(r, dtype=np.float32).reshape(len(r), -1)
            learn_store.save_features(store, key, done)
            cached.update(done)
            out.computed += len(done)
            finished += len(chunk)
            if on_progress:
                on_progress("features", finished, len(todo))
        ahead.shutdown(wait=False, cancel_futures=True)
    for sid, h in rows:
        if h in cached:
            out.vectors[sid] = cached[h]
        else:
            out.failed[sid] = errors.get(h, "no features")
    return out


@dataclass
class AnomalyModel:
    """A trained anomaly model: StandardScaler's ``mean`` and ``scale``, the clusters'
    ``centers`` and ``max_error`` in scaled space, the feature ``axes`` it uses."""

    mean: np.ndarray
    scale: np.ndarray
    centers: np.ndarray
    max_error: np.ndarray
    axes: list[int]

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """The anomaly score of each row of ``vectors`` [n, dim] (all the extractor's values):
        distances as |z|^2 - 2 z.c + |c|^2, a matrix product (no [n, clusters, dim] array)."""
        x = np.asarray(vectors, dtype=np.float64)
        z = ((x if len(self.axes) == x.shape[1] else x[:, self.axes]) - self.mean) / self.scale
        sq = (z * z).sum(axis=1)[:, None] - 2.0 * (z @ self.centers.T) + (self.centers**2).sum(axis=1)[None, :]
        return (np.sqrt(np.maximum(sq, 0.0)) - self.max_error[None, :]).min(axis=1)

    def window_scores(self, per_sample: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each sample's windows' scores (``per_sample``: [windows, dim] each), scored in one pass."""
        if not per_sample:
            return []
        flat = self.scores(np.concatenate(per_sample))
        if all(len(v) == 1 for v in per_sample):  # one window each (images): nothing to split
            return list(flat[:, None])
        return np.split(flat, np.cumsum([len(v) for v in per_sample])[:-1])

    def sample_scores(self, per_sample: Sequence[np.ndarray]) -> np.ndarray:
        """Each sample's score (the largest of its windows'), scored in one pass."""
        if not per_sample:
            return np.zeros(0)
        counts = np.array([len(v) for v in per_sample])
        flat = self.scores(np.concatenate(per_sample))
        return np.maximum.reduceat(flat, np.concatenate(([0], np.cumsum(counts)[:-1])))

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "axes": self.axes,
                "clusters": [{"center": c.tolist(), "maxError": float(e)}
                             for c, e in zip(self.centers, self.max_error, strict=True)]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AnomalyModel:
        return cls(np.asarray(d["mean"]), np.asarray(d["scale"]), np.asarray([c["center"] for c in d["clusters"]]),
                   np.asarray([c["maxError"] for c in d["clusters"]]), [int(a) for a in d["axes"]])


def fit(rows: np.ndarray, clusters: int, axes: list[int], seed: int = 0) -> AnomalyModel:
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(rows, dtype=np.float64)
    if axes != list(range(x.shape[1])):
        x = x[:, axes]
    scaler = StandardScaler().fit(x)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    z = (x - scaler.mean_) / scale
    km = KMeans(n_clusters=clusters, random_state=seed, n_init=3).fit(z)
    dist = np.sqrt(((z - km.cluster_centers_[km.labels_]) ** 2).sum(axis=1))
    max_error = np.zeros(clusters)
    np.maximum.at(max_error, km.labels_, dist)
    return AnomalyModel(scaler.mean_, scale, km.cluster_centers_, max_error, axes)


def _selection(f: SampleFilter | None) -> tuple[SampleFilter, SampleFilter]:
    """(training, validation): the filter's categories, or training against validation and
    testing with the same other conditions."""
    base = f or SampleFilter()
    if base.categories:
        held_out: list[str] = [c for c in ("validation", "testing") if c in base.categories] or ["__none__"]
        return base, base.replace(categories=held_out)
    return base.replace(categories=["training"]), base.replace(categories=["validation", "testing"])


def _rows(store: Store, f: SampleFilter, modality: str) -> tuple[list[tuple[int, str]], list[int], dict[int, Any]]:
    """(id, content hash) of the samples of ``modality`` the filter selects; the ids of the
    others; and per id (label, total length ms)."""
    rows = store.scan(f, "content_hash", "frequency", "label", "total_length_ms")
    fit_rows = [(sid, h) for sid, h, hz, _, _ in rows if (hz is not None) == (modality == "audio")]
    other = [sid for sid, _, hz, _, _ in rows if (hz is not None) != (modality == "audio")]
    return fit_rows, other, {sid: (label, ms) for sid, _, _, label, ms in rows}


def train_anomaly(store: Store, features: str, extractor_params: Mapping[str, str] | None = None,
                  clusters: int = DEFAULT_CLUSTERS, axes: str | None = None, f: SampleFilter | None = None,
                  name: str = "", anomaly_label: str = ANOMALY,
                  on_progress: ProgressFn | None = None) -> learn_store.LearnRecord:
    """Train an anomaly learn block and store it; returns it."""
    if clusters < 1:
        raise InvalidInput(f"--clusters: expected at least 1, got {clusters}")
    ex = extractor(features, extractor_params)
    train_f, valid_f = _selection(f)
    rows, other, info = _rows(store, train_f, ex.modality)
    if not rows:
        raise InvalidInput(f"no {ex.modality} samples to train on in the selection (the {features} features are "
                           f"for {ex.modality}{'; it has ' + str(len(other)) + ' of the other kind' if other else ''})")
    valid_rows, _, valid_info = _rows(store, valid_f, ex.modality)
    info.update(valid_info)
    got = compute_features(store, ex, rows + valid_rows, on_progress)
    train = [(sid, got.vectors[sid]) for sid, _ in rows if sid in got.vectors]
    if not train:
        raise InvalidInput(f"none of the {len(rows)} training samples could be read by {features}: "
                           + "; ".join(f"sample {sid}: {why}" for sid, why in list(got.failed.items())[:5]))
    stacked = np.concatenate([v for _, v in train])
    if len(stacked) < clusters:
        raise InvalidInput(f"{len(stacked)} feature vectors from {len(train)} training samples are fewer than the "
                           f"{clusters} clusters asked for: use --clusters {max(1, len(stacked) // 2)} or more samples")
    dim = stacked.shape[1]
    ax = parse_axes(axes, dim)
    if on_progress:
        on_progress("clustering", 0, 1)
    model = fit(stacked, clusters, ax)
    train_scores = model.sample_scores([v for _, v in train])
    valid = [(sid, got.vectors[sid]) for sid, _ in valid_rows if sid in got.vectors]
    metadata = anomaly_metadata(model, train_scores, valid, info, anomaly_label)
    params = {"clusters": clusters, "axes": axes or "", "filter": f.to_json()
              if f is not None else None, "anomalyLabel": anomaly_label, "failed": got.failed,
              "computed": got.computed, "dim": dim}
    learn_id = learn_store.save_learn(store, "anomaly", name or f"anomaly on {features}",
                                      {**ex.describe(), "key": ex.key()}, params, [sid for sid, _ in train],
                                      model.to_json(), metadata)
    if on_progress:
        on_progress("clustering", 1, 1)
    return learn_store.get_learn(store, learn_id)


def anomaly_metadata(model: AnomalyModel, train_scores: np.ndarray, valid: Sequence[tuple[int, np.ndarray]],
                     info: Mapping[int, Any], anomaly_label: str) -> dict[str, Any]:
    """The protocol's anomaly metadata: the model, ``thresholds`` (``min_anomaly_score``: the
    99th percentile of the training scores, or the F1-best score where validation samples are
    labeled anomalous), and one ``modelValidationMetrics`` item scored on the validation and
    testing samples (a confusion matrix of anomaly against normal where they carry labels)."""
    from .evaluate import label_metrics, sweep

    suggested = float(np.percentile(train_scores, SUGGEST_PERCENTILE))
    how = f"the {SUGGEST_PERCENTILE:g}th percentile of the {len(train_scores)} training samples' scores"
    scores = dict(zip([sid for sid, _ in valid], model.window_scores([v for _, v in valid]), strict=True))
    labeled = [sid for sid, _ in valid if info.get(sid, (None, None))[0]]
    truth = {sid: (ANOMALY if info[sid][0] == anomaly_label else NORMAL) for sid in labeled}
    if any(t == ANOMALY for t in truth.values()) and any(t == NORMAL for t in truth.values()):
        s = np.array([scores[sid].max() for sid in labeled])
        hits = np.array([truth[sid] == ANOMALY for sid in labeled])
        _, best, _ = sweep(s, hits, float(hits.sum()), None)
        suggested = best[1]
        how = (f"the score that maximises F1 (F1 {best[0]:.2f}) on the {len(labeled)} validation samples "
               f"labeled {anomaly_label!r} or otherwise")
    predictions = []
    for sid, _ in valid:
        s = scores[sid]
        _, ms = info.get(sid, (None, None))
        item: dict[str, Any] = {"sampleId": sid, "startMs": 0.0, "endMs": float(ms or 0.0),
                                "prediction": ANOMALY if s.max() >= suggested else NORMAL,
                                "anomalyScores": [[float(x)] for x in s]}
        if sid in truth:
            item.update(label=truth[sid], predictionCorrect=item["prediction"] == truth[sid])
        predictions.append(item)
    metrics: dict[str, Any] = {"type": "float32", "loss": 0.0, "additionalMetrics": [], "onDevicePerformance": [],
                               "visualization": "none", "isSupportedOnMcu": False, "predictions": predictions,
                               "confusionMatrix": [], "report": {}, "accuracy": 0.0}
    if truth:
        classes = [ANOMALY, NORMAL]
        t = np.array([classes.index(truth[sid]) for sid in labeled])
        p = np.array([classes.index(ANOMALY if scores[sid].max() >= suggested else NORMAL) for sid in labeled])
        m = label_metrics(t, p, classes)
        metrics.update(confusionMatrix=m["confusionMatrix"], report=m["report"], accuracy=m["accuracy"])
    return {
        "success": True, "created": datetime.now(tz=UTC).isoformat(), "hasTrainedModel": True,
        **{k: v for k, v in model.to_json().items()},
        "defaultMinimumConfidenceRating": suggested,
        "thresholds": [{"key": "min_anomaly_score", "description": "minimum anomaly score of an anomaly",
                        "helpText": "samples scoring at or above it are anomalies", "value": suggested,
                        "suggestedValue": suggested, "suggestedValueText": f"{suggested:.4f}: {how}"}],
        "modelValidationMetrics": [metrics],
    }


class LoadedAnomaly:
    """A stored anomaly learn block, ready to score samples (what the ``anomaly`` block
    gets from its context): features through the same extractor and cache."""

    def __init__(self, store: Store, record: learn_store.LearnRecord) -> None:
        self.store, self.record = store, record
        self.model = AnomalyModel.from_json(record.model)
        self.threshold = float(record.metadata.get("defaultMinimumConfidenceRating", 0.0))
        self.modality = str(record.extractor.get("modality", "image"))
        self._extractor: FeatureExtractor | None = None

    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            ex = extractor(self.record.extractor["name"], self.record.extractor.get("parameters"))
            if ex.key() != self.record.extractor.get("key"):
                raise InvalidInput(f"learn block {self.record.id} was trained with {ex.name} version "
                                   f"{self.record.extractor.get('version')}; the installed one differs: train again")
            self._extractor = ex
        return self._extractor

    def score(self, rows: Sequence[tuple[int, str]]) -> tuple[dict[int, np.ndarray], dict[int, str]]:
        """Per (sample id, content hash): its windows' scores; and the failures."""
        got = compute_features(self.store, self.extractor(), rows)
        ids = list(got.vectors)
        return dict(zip(ids, self.model.window_scores([got.vectors[sid] for sid in ids]), strict=True)), got.failed


def load(store: Store, learn_id: int) -> LoadedAnomaly:
    record = learn_store.get_learn(store, learn_id)
    if record.kind != "anomaly":
        raise InvalidInput(f"learn block {learn_id} is a {record.kind} block, not an anomaly block")
    return LoadedAnomaly(store, record)
