"""Metrics of a clip run (EPIC-KITCHENS-style verb + noun classification), numpy/pandas only.

A segment has a true verb and a true noun; the model gives a softmax over the V verb classes
and one over the Nn noun classes. The action (verb, noun) is right when both are right; actions
are ranked by p_verb * p_noun. Top-k with fewer than k classes (or actions) is top-k over all
of them (always right). Ties are broken by the lower class index (the order `argmax` picks), and
for actions by the verb's rank, then the noun's, so top-5 actions from the top-5 verbs x top-5
nouns candidates equal the brute-force top-5 over all V x Nn pairs exactly.

Subsets (`clip_metrics(..., subsets=...)`): a mask named `tail_verb` with one named `tail_noun`
makes the "tail" subset as the EPIC-KITCHENS-100 challenge defines it: verb metrics over the
segments whose true verb is a tail class, noun metrics over those whose true noun is, action
metrics over those with a tail verb or a tail noun (`tail_n`; `tail_verb_n`, `tail_noun_n` count
the first two). Any other name `s` (e.g. "unseen": segments of participants unseen in training)
is a plain subset: verb, noun and action over its segments. A segment whose flag is None is
outside the subset; a mask of None only is unknown: its keys are left out. Subset keys
`{s}_verb_top1` .. `{s}_action_top5` are present only over a non-empty group, so they are never
NaN; `{s}_n` always is when the subset is known.
Returned values are plain Python ints and floats; a metric over no segment at all is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

TOP_K = 5
PARTS = ("verb", "noun", "action")
METRIC_KEYS = tuple(f"{p}_top{k}" for p in PARTS for k in (1, TOP_K))  # verb_top1 .. action_top5
SUBSETS = ("unseen", "tail")  # the subsets a clip run may report, in display order
TAIL_MASKS = ("tail_verb", "tail_noun")  # the two masks the tail subset is made of
CLIP_METRIC_NAMES: dict[str, str] = {
    "verb_top1": "verb top-1",
    "verb_top5": "verb top-5",
    "noun_top1": "noun top-1",
    "noun_top5": "noun top-5",
    "action_top1": "action top-1",
    "action_top5": "action top-5",
}
# the predictions table's columns (predictions/{split}.parquet), as `clip_frame` writes them
META_COLUMNS = ("participant", "video", "unseen", "tail_verb", "tail_noun")
FRAME_COLUMNS = (
    "key",
    "image_id",
    "participant",
    "video",
    "verb_true",
    "noun_true",
    "verb_pred",
    "noun_pred",
    "verb_top5",
    "noun_top5",
    "action_correct",
    "action_top5_correct",
    "unseen",
    "tail_verb",
    "tail_noun",
)


def top_k(prob: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """[N, min(k, C)] class indices of each row, highest probability first (ties: lower index)."""
    prob = np.asarray(prob, dtype=np.float64)
    return np.argsort(-prob, axis=1, kind="stable")[:, : min(k, prob.shape[1])]


def action_top_k(verb_prob: np.ndarray, noun_prob: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """[N, min(k, V*Nn), 2] (verb, noun) of the k best actions by p_verb * p_noun, best first.

    Exact from the top-k verbs x top-k nouns: an action whose verb ranks below k is beaten by the
    k better-ranked verbs with the same noun (ties go to the better verb rank, then noun rank)."""
    verb_prob = np.asarray(verb_prob, dtype=np.float64)
    noun_prob = np.asarray(noun_prob, dtype=np.float64)
    verbs, nouns = top_k(verb_prob, k), top_k(noun_prob, k)
    rows = np.arange(len(verbs))[:, None]
    product = verb_prob[rows, verbs][:, :, None] * noun_prob[rows, nouns][:, None, :]
    kv, kn = verbs.shape[1], nouns.shape[1]
    order = np.argsort(-product.reshape(len(verbs), kv * kn), axis=1, kind="stable")[:, : min(k, kv * kn)]
    return np.stack([np.take_along_axis(verbs, order // kn, 1), np.take_along_axis(nouns, order % kn, 1)], 2)


def _labels(values: object, n: int, classes: int, what: str) -> np.ndarray:
    """Class indices as int64, [n] and each in 0..classes-1; ValueError otherwise."""
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{what}: expected {n} labels, got shape {arr.shape}")
    if n and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= classes):
        raise ValueError(f"{what}: expected class indices in 0..{classes - 1}")
    return arr.astype(np.int64)


def _probs(values: object, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"{what}: expected [N, classes] probabilities, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: NaN or infinite probabilities")
    return arr


def correctness(
    verb_prob: np.ndarray, noun_prob: np.ndarray, verb_true: object, noun_true: object
) -> dict[str, np.ndarray]:
    """Per segment, as bool arrays [N]: verb_top1, verb_top5, noun_top1, noun_top5, action_top1
    (verb and noun top-1 both right), action_top5 (the true pair among the 5 best products)."""
    verb_prob, noun_prob = _probs(verb_prob, "verb_prob"), _probs(noun_prob, "noun_prob")
    n = len(verb_prob)
    if len(noun_prob) != n:
        raise ValueError(f"noun_prob: {len(noun_prob)} rows, verb_prob has {n}")
    verb = _labels(verb_true, n, verb_prob.shape[1], "verb_true")
    noun = _labels(noun_true, n, noun_prob.shape[1], "noun_true")
    verbs, nouns = top_k(verb_prob), top_k(noun_prob)
    actions = action_top_k(verb_prob, noun_prob)
    hit = {
        "verb_top1": verbs[:, 0] == verb,
        "verb_top5": (verbs == verb[:, None]).any(1),
        "noun_top1": nouns[:, 0] == noun,
        "noun_top5": (nouns == noun[:, None]).any(1),
    }
    hit["action_top1"] = hit["verb_top1"] & hit["noun_top1"]
    hit["action_top5"] = ((actions[:, :, 0] == verb[:, None]) & (actions[:, :, 1] == noun[:, None])).any(1)
    return hit


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def _mask(values: object, n: int, name: str) -> np.ndarray | None:
    """A subset mask as bool [n], an unknown entry (None, NaN, pd.NA) outside the subset; None
    when n > 0 and every entry is unknown (the subset is unknown)."""
    arr = np.asarray(values, dtype=object)
    if arr.shape != (n,):
        raise ValueError(f"subset {name!r}: expected {n} flags, got shape {arr.shape}")
    unknown = np.array([v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) for v in arr])
    if n and unknown.all():
        return None
    return np.where(unknown, False, arr).astype(bool)


def _on(hit: dict[str, np.ndarray], prefix: str, masks: dict[str, np.ndarray]) -> dict:
    """`{prefix}{part}_top{k}` over each part's mask, only where that mask selects a segment."""
    out = {}
    for key in METRIC_KEYS:
        mask = masks[key.split("_")[0]]
        if mask.any():
            out[prefix + key] = _mean(hit[key][mask])
    return out


def subset_metrics(hit: dict[str, np.ndarray], subsets: Mapping[str, object] | None) -> dict:
    """The subset keys of `clip_metrics` from per-segment correctness (see the module doc)."""
    if not subsets:
        return {}
    n = len(hit["verb_top1"])
    known = {name: _mask(values, n, name) for name, values in subsets.items()}
    out: dict = {}
    for name, mask in known.items():
        if name in TAIL_MASKS or mask is None:
            continue
        out |= _on(hit, f"{name}_", dict.fromkeys(PARTS, mask)) | {f"{name}_n": int(mask.sum())}
    tail_verb, tail_noun = known.get("tail_verb"), known.get("tail_noun")
    if tail_verb is not None and tail_noun is not None:
        either = tail_verb | tail_noun
        out |= _on(hit, "tail_", {"verb": tail_verb, "noun": tail_noun, "action": either})
        out |= {"tail_n": int(either.sum()), "tail_verb_n": int(tail_verb.sum())}
        out["tail_noun_n"] = int(tail_noun.sum())
    return out


def clip_metrics(
    verb_prob: np.ndarray,
    noun_prob: np.ndarray,
    verb_true: object,
    noun_true: object,
    subsets: Mapping[str, object] | None = None,
) -> dict:
    """verb_top1, verb_top5, noun_top1, noun_top5, action_top1, action_top5 (fractions of the n
    segments; NaN when n is 0) and n, plus the subset keys (module doc). verb_prob [N, V] and
    noun_prob [N, Nn] are probabilities (any scores ranking the same way work for top-k; the
    action ranking needs probabilities), verb_true and noun_true class indices [N]; ValueError
    for mismatched shapes, out-of-range labels or non-finite probabilities."""
    hit = correctness(verb_prob, noun_prob, verb_true, noun_true)
    out: dict = {key: _mean(hit[key]) for key in METRIC_KEYS}
    out["n"] = len(hit["verb_top1"])
    return out | subset_metrics(hit, subsets)


def per_class_accuracy(true: object, pred: object, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts [n_classes]: segments of each true class, accuracy [n_classes]: the share of them
    predicted right, NaN for a class with none)."""
    true, pred = np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    counts = np.bincount(true, minlength=n_classes)[:n_classes]
    right = np.bincount(true[true == pred], minlength=n_classes)[:n_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(counts > 0, right / np.maximum(counts, 1), math.nan)
    return counts, accuracy


def confusion(true: object, pred: object, classes: Sequence[int]) -> np.ndarray:
    """[len(classes), len(classes) + 1] counts: row = true class (of `classes`), column = the
    predicted class among `classes`, the last column every prediction outside them."""
    true, pred = np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    index = {int(c): i for i, c in enumerate(classes)}
    out = np.zeros((len(index), len(index) + 1), dtype=np.int64)
    for t, p in zip(true, pred, strict=True):
        row = index.get(int(t))
        if row is not None:
            out[row, index.get(int(p), len(index))] += 1
    return out


def _meta_column(meta: Mapping[str, Sequence] | None, name: str, n: int) -> list:
    values = list((meta or {}).get(name) or [None] * n)
    if len(values) != n:
        raise ValueError(f"meta {name!r}: {len(values)} values for {n} segments")
    return values


def clip_frame(
    keys: Sequence[str],
    ids: Sequence[int],
    meta: Mapping[str, Sequence] | None,
    verb_prob: np.ndarray,
    noun_prob: np.ndarray,
    verb_true: object,
    noun_true: object,
) -> pd.DataFrame:
    """The predictions table of one split (predictions/{split}.parquet), one row per segment.

    keys: sample keys; ids: image_id of each segment; meta: lists of N values each under
    "participant", "video" (str), "unseen", "tail_verb", "tail_noun" (bool, or None unknown),
    a missing name all None; the probabilities and labels as for `clip_metrics`. Columns:
    FRAME_COLUMNS (verb_top5 / noun_top5: lists of min(5, classes) ints, best first)."""
    hit = correctness(verb_prob, noun_prob, verb_true, noun_true)
    n = len(hit["verb_top1"])
    if len(keys) != n or len(ids) != n:
        raise ValueError(f"keys/ids: {len(keys)}/{len(ids)} for {n} segments")
    verbs, nouns = top_k(_probs(verb_prob, "verb_prob")), top_k(_probs(noun_prob, "noun_prob"))
    df = pd.DataFrame(
        {
            "key": [str(k) for k in keys],
            "image_id": np.asarray(ids, dtype=np.int64),
            **{m: _meta_column(meta, m, n) for m in META_COLUMNS[:2]},
            "verb_true": np.asarray(verb_true, dtype=np.int64),
            "noun_true": np.asarray(noun_true, dtype=np.int64),
            "verb_pred": verbs[:, 0] if n else np.zeros(0, np.int64),
            "noun_pred": nouns[:, 0] if n else np.zeros(0, np.int64),
            "verb_top5": [[int(v) for v in row] for row in verbs],
            "noun_top5": [[int(v) for v in row] for row in nouns],
            "action_correct": hit["action_top1"],
            "action_top5_correct": hit["action_top5"],
        }
    )
    for name in META_COLUMNS[2:]:
        values = _meta_column(meta, name, n)
        df[name] = pd.array([None if v is None else bool(v) for v in values], dtype="boolean")
    return df


def frame_metrics(df: pd.DataFrame) -> dict:
    """`clip_metrics`' keys recomputed from a predictions table (FRAME_COLUMNS, already checked):
    the subsets from its unseen / tail_verb / tail_noun columns where every value is known."""
    verb, noun = df["verb_true"].to_numpy(np.int64), df["noun_true"].to_numpy(np.int64)
    hit = {
        "verb_top1": df["verb_pred"].to_numpy(np.int64) == verb,
        "noun_top1": df["noun_pred"].to_numpy(np.int64) == noun,
        "verb_top5": np.array([v in top for v, top in zip(verb, df["verb_top5"], strict=True)], dtype=bool),
        "noun_top5": np.array([v in top for v, top in zip(noun, df["noun_top5"], strict=True)], dtype=bool),
        "action_top1": df["action_correct"].to_numpy(bool),
        "action_top5": df["action_top5_correct"].to_numpy(bool),
    }
    out: dict = {key: _mean(hit[key]) for key in METRIC_KEYS}
    out["n"] = len(df)
    subsets = {
        name: df[name].astype(object).where(df[name].notna(), None).to_numpy() for name in META_COLUMNS[2:]
    }
    return out | subset_metrics(hit, subsets)
