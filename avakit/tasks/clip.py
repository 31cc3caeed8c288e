"""The clip task: a video segment's verb and noun (EPIC-KITCHENS action recognition).

A sample is a group: F frames of one segment stored in time order (`000.jpg ...`) and a clips
label (avakit.dataset.samples.check_clip_label). TSN sampling takes `clip.frames` (T) of them:
in training one random frame of each of T equal sub-segments, in evaluation the centre one of
each; only those JPEGs are decoded, and ONE preset call on the [T, 3, H, W] stack gives every
frame of a clip the same crop, flip, jitter and erasing. The model (avakit.model.clip) pools the
per-frame features over time and has a verb and a noun head; the loss is CE(verb) + CE(noun).
Metrics come from `avakit.clip_metrics` (verb/noun/action top-1 and top-5; the action ranks by
p_verb * p_noun), on the unseen-participant and tail-class subsets too when labels mark them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avakit.clip_metrics import clip_frame, clip_metrics
from avakit.dataset.samples import CLIP_FLAGS, Reason, decode_image, member_name
from avakit.errors import AvakitError
from avakit.scores import CLIPS, Scale
from avakit.tasks.base import Prepared, StepContext, autocast, pass_totals, read_group, to_input

AXES = ("verb", "noun", "action")


def tsn_indices(n_stored: int, frames: int, train: bool) -> list[int]:
    """Which of `n_stored` frames TSN takes: one per each of `frames` equal sub-segments, random
    within it in training, its centre in evaluation (fewer stored than wanted: some repeat)."""
    out = []
    for k in range(frames):
        lo, hi = (k * n_stored) // frames, ((k + 1) * n_stored) // frames
        if train and hi > lo + 1:
            out.append(lo + int(torch.randint(0, hi - lo, ())))
        else:
            out.append(min(int((k + 0.5) * n_stored / frames), n_stored - 1))
    return out


def flag_codes(label: dict) -> list[int]:
    """A clip's subset flags (unseen, tail_verb, tail_noun) as 1 / 0, -1 where unknown (null)."""
    return [-1 if label.get(f) is None else int(label[f]) for f in CLIP_FLAGS]


class ClipDecoder:
    """Raw group sample -> (frames uint8 [T, 3, c, c], [verb, noun], info, id, code).

    A sample whose label is malformed, whose class ids reach the configured class counts, whose
    frame members are missing or whose chosen frames do not decode gives zero frames and its
    reason code: it is counted, never trained on. Picklable for DataLoader workers.
    """

    def __init__(
        self, preset: Callable, crop: int, frames: int, classes: tuple[int, int], train: bool
    ) -> None:
        self.preset, self.crop, self.frames, self.classes, self.train = preset, crop, frames, classes, train

    def __call__(self, sample: dict) -> tuple:
        """Decode one raw clip sample (see the class docstring)."""
        label, ident, code = read_group(sample, CLIPS)
        if label is None:
            return self._none(ident, code)
        if label["verb_class"] >= self.classes[0] or label["noun_class"] >= self.classes[1]:
            return self._none(label["image_id"], int(Reason.CLIP))
        stored = len(label["frames"])
        if any(member_name(k) not in sample for k in range(stored)):
            return self._none(label["image_id"], int(Reason.MEMBERS))
        chosen = tsn_indices(stored, self.frames, self.train)
        try:
            decoded = {k: decode_image(sample[member_name(k)]) for k in sorted(set(chosen))}
            frames = self.preset(torch.stack([decoded[k] for k in chosen]))
        except (RuntimeError, ValueError):  # undecodable JPEG, or frames of different sizes
            return self._none(label["image_id"], int(Reason.IMAGE))
        info = {
            "key": label["key"],
            "participant": str(label.get("participant", "")),
            "video": str(label.get("video", "")),
            "flags": flag_codes(label),
        }
        return frames, [label["verb_class"], label["noun_class"]], info, label["image_id"], 0

    def _none(self, ident: int, code: int) -> tuple:
        c = self.crop
        info = {"key": "", "participant": "", "video": "", "flags": [-1, -1, -1]}
        return torch.zeros((self.frames, 3, c, c), dtype=torch.uint8), [-1, -1], info, ident, code

    @staticmethod
    def collate(samples: list[tuple]) -> tuple:
        """Clip samples -> (frames [B, T, 3, c, c] uint8, labels, ids [B], codes [B])."""
        frames, classes, infos, ids, codes = zip(*samples, strict=True)
        labels = {
            "classes": torch.tensor(classes, dtype=torch.long).reshape(-1, 2),
            "flags": torch.tensor([i["flags"] for i in infos], dtype=torch.int8).reshape(-1, len(CLIP_FLAGS)),
            "meta": [(i["key"], i["participant"], i["video"]) for i in infos],
            "ids": torch.tensor(ids, dtype=torch.long),
        }
        return torch.stack(frames), labels, torch.tensor(ids), torch.tensor(codes)


def _correct(verb: torch.Tensor, noun: torch.Tensor, classes: torch.Tensor) -> dict[str, int]:
    """Top-1 hits of a batch: verb, noun, and action (both right)."""
    v, n = verb.argmax(1) == classes[:, 0], noun.argmax(1) == classes[:, 1]
    return {"verb_top1": int(v.sum()), "noun_top1": int(n.sum()), "action_top1": int((v & n).sum())}


class ClipTask:
    """The clip task (`task: clip`), as `training` calls it."""

    name = "clip"
    select_metrics = ("action_top1", "verb_top1", "noun_top1", "loss")
    history_keys = ("verb_top1", "verb_top5", "noun_top1", "noun_top5", "action_top1", "action_top5", "n")
    gap_metric = "action_top1"  # the history's gap = train - val of this metric

    def decoder(self, preset: Callable, crop_size: int, scale: Scale, train: bool, cfg=None) -> ClipDecoder:
        """TSN sampling of `cfg.clip.frames` frames, one `preset` call per clip."""
        if getattr(preset, "tta", "none") != "none":
            raise AvakitError("tta: a clip run is evaluated on its centre crops only (--tta none)")
        c = cfg.clip
        return ClipDecoder(preset, crop_size, c.frames, (c.verb_classes, c.noun_classes), train)

    collate = staticmethod(ClipDecoder.collate)

    def prepare(self, batch: tuple, ctx: StepContext) -> Prepared:
        """The usable clips' frames normalised on the device, flattened to [n * T, 3, c, c]."""
        frames, labels, _, codes = batch
        valid = codes if codes.dtype == torch.bool else codes == 0
        n = int(valid.sum())
        if n == 0:
            return Prepared(frames[:0], labels, 0, len(valid))
        x = to_input(frames[valid].flatten(0, 1), ctx)
        kept = {
            "classes": labels["classes"][valid].to(ctx.device),
            "flags": labels["flags"][valid],
            "ids": labels["ids"][valid],
            "meta": [m for m, ok in zip(labels["meta"], valid.tolist(), strict=True) if ok],
        }
        return Prepared(x, kept, n, len(valid) - n)

    def loss(self, model: nn.Module, p: Prepared, ctx: StepContext) -> tuple[torch.Tensor, int]:
        """CE(verb) + CE(noun), mean over the batch's clips; the running train top-1 hits go to
        `ctx.epoch_counts` (the history's train_* and gap)."""
        with autocast(ctx.device, ctx.amp):
            verb, noun = model(p.x)
        verb, noun, classes = verb.float(), noun.float(), p.labels["classes"]
        loss = F.cross_entropy(verb, classes[:, 0]) + F.cross_entropy(noun, classes[:, 1])
        if ctx.epoch_counts is not None:
            with torch.no_grad():
                for key, hits in {**_correct(verb, noun, classes), "n": p.n}.items():
                    ctx.epoch_counts[key] = ctx.epoch_counts.get(key, 0) + hits
        return loss, p.n

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, loader, ctx: StepContext, advance=None, warmup: bool = False
    ) -> dict:
        """Verb and noun probabilities of every clip, with its labels (and the summed loss)."""
        model.eval()
        out: dict[str, list] = {k: [] for k in ("verb_prob", "noun_prob", "classes", "flags", "ids", "meta")}
        loss_sum, n, corrupt, model_s, start = 0.0, 0, 0, 0.0, time.perf_counter()
        for batch in loader:
            p = self.prepare(batch, ctx)
            corrupt += p.corrupt
            if p.n == 0:
                continue
            t0 = time.perf_counter()
            with autocast(ctx.device, ctx.amp):
                verb, noun = model(p.x)
            verb, noun, classes = verb.float(), noun.float(), p.labels["classes"]
            model_s += time.perf_counter() - t0
            ce = F.cross_entropy(verb, classes[:, 0], reduction="sum")
            loss_sum += float(ce + F.cross_entropy(noun, classes[:, 1], reduction="sum"))
            n += p.n
            out["verb_prob"].append(verb.softmax(1).cpu().numpy())
            out["noun_prob"].append(noun.softmax(1).cpu().numpy())
            out["classes"].append(classes.cpu().numpy())
            out["flags"].append(p.labels["flags"].numpy())
            out["ids"].append(p.labels["ids"].numpy())
            out["meta"] += p.labels["meta"]
            if advance is not None:
                advance(p.n)
        arrays = {k: (np.concatenate(v) if v and k != "meta" else v) for k, v in out.items()}
        return {
            **arrays,
            "loss_sum": loss_sum,
            "n": n,
            "n_images": n * ctx_frames(model),
            "corrupt": corrupt,
            "seconds": time.perf_counter() - start,
            "model_seconds": model_s,
        }

    def merge(self, parts: list[dict]) -> dict:
        """Ranks' results joined, clips sorted by (image_id, key)."""
        full = [q for q in parts if q["n"]]
        merged = pass_totals(parts, "n_images")
        if not full:
            return merged
        meta = [m for q in full for m in q["meta"]]
        ids = np.concatenate([q["ids"] for q in full])
        order = np.lexsort((np.array([m[0] for m in meta], dtype=object).astype(str), ids))
        joined = {
            k: np.concatenate([q[k] for q in full])[order]
            for k in ("verb_prob", "noun_prob", "classes", "flags")
        }
        return {**merged, **joined, "ids": ids[order], "meta": [meta[i] for i in order]}

    def summarise(
        self, merged: dict, ctx: StepContext, threshold: float | None, final: bool = False
    ) -> tuple[dict, dict]:
        """(metrics, {"": one row per clip}) in the run-folder contract (predictions/{split}.parquet);
        the unseen and tail subsets where the labels mark them (avakit.clip_metrics)."""
        if not merged["n"]:
            return {"n": 0}, {}
        flags, classes, meta = merged["flags"], merged["classes"], merged["meta"]
        columns = {
            name: [None if f < 0 else bool(f) for f in flags[:, i]] for i, name in enumerate(CLIP_FLAGS)
        }
        probs = (merged["verb_prob"], merged["noun_prob"], classes[:, 0], classes[:, 1])
        found = clip_metrics(*probs, columns)
        columns.update(participant=[m[1] for m in meta], video=[m[2] for m in meta])
        table = clip_frame([m[0] for m in meta], merged["ids"], columns, *probs)
        return {**found, "n": int(merged["n"])}, {"": table}

    def metrics_line(self, found: dict, select_metric: str) -> str:
        """Action, verb and noun top-1 (top-5)."""
        get = lambda k: found.get(k, math.nan)  # noqa: E731
        return "  ".join(f"{a} top-1 {get(f'{a}_top1'):.3f} (top-5 {get(f'{a}_top5'):.3f})" for a in AXES)


def ctx_frames(model: nn.Module) -> int:
    """Frames per clip of a (possibly DDP-wrapped) clip model, for the frames/s figure."""
    return int(getattr(getattr(model, "module", model), "frames", 1))


CLIP = ClipTask()
