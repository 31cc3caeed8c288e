"""The pairwise task: which of two photos of one series is better.

A sample is a group (a PhotoTriage series: its photos `000.jpg, 001.jpg, ...` and its pairs
[i, j, p_ij, rank_i, rank_j]). The model is a single-image scorer s(x) and
P(i better than j) = sigmoid(s(i) - s(j)) (`pairs.head: difference`), antisymmetric by
construction, so `predict` and `export` serve a pairwise run as they serve a score run; the
backbone runs once per photo of a batch and the pairs are formed in the batch. Losses: BCE
against the soft ratio or the hard winner, or a hinge with a margin. Metrics come from
`avakit.pair_metrics` (pairwise accuracy with its human ceiling, log-loss, series top-1, Kendall tau).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from avakit.dataset.samples import Reason, decode_image, member_name
from avakit.pair_metrics import folder_metrics, pair_metrics
from avakit.scores import PAIRS, Scale
from avakit.tasks.base import Prepared, StepContext, autocast, pass_totals, read_group, to_input
from avakit.tasks.pair_views import PairView, PhotoView, make_view

Decoded = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str], dict, int, int]
GRADE_CODES = {"good": 1, "bad": 0}  # a photo's grade in a batch; -1 = none (PhotoTriage)


class PairDecoder:
    """Raw group sample -> (photos uint8 [M, 3, c, c], pairs [P, 5], ranks [M], member names,
    info (group, grades, MOS), id, code).

    A sample whose label or any photo is bad gives no photos and no pairs and its reason code:
    it is counted, never trained on. `max_pairs` (training, folders) draws that many of a group's
    pairs afresh each time it is decoded, shared between the chunks of one folder, so a 50 x 50
    folder does not outweigh ten 2 x 2 ones (0 = every pair). Picklable for DataLoader workers.
    """

    def __init__(self, view: PairView | PhotoView, max_pairs: int = 0) -> None:
        self.view, self.max_pairs = view, max_pairs

    def __call__(self, sample: dict) -> Decoded:
        """Decode one raw group sample (see the class docstring)."""
        label, ident, code = read_group(sample, PAIRS)
        if label is None:
            return self._none(ident, code)
        members = [sample.get(member_name(k)) for k in range(len(label["members"]))]
        if any(m is None for m in members):
            return self._none(label["image_id"], int(Reason.MEMBERS))
        grades = label.get("grades") or [""] * len(members)
        try:
            photos = self.view([decode_image(m) for m in members], grades)
        except (RuntimeError, ValueError):
            return self._none(label["image_id"], int(Reason.IMAGE))
        rows = self._draw(label)
        pairs = torch.tensor(rows, dtype=torch.float64).reshape(-1, 5)
        ranks = torch.zeros(len(members), dtype=torch.long)
        for i, j, _, rank_i, rank_j in label["pairs"]:
            ranks[i], ranks[j] = rank_i, rank_j
        return photos, pairs, ranks, list(label["members"]), _info(label, len(members)), label["image_id"], 0

    def _draw(self, label: dict) -> list:
        """The pairs to use: all, or a random `max_pairs` share (this chunk's part of its folder's)."""
        rows = label["pairs"]
        if not self.max_pairs:
            return rows
        n_chunks = label.get("chunk", [0, 1])[1]
        cap = -(-self.max_pairs // n_chunks)  # ceil: the folder's cap spread over its chunks
        return rows if len(rows) <= cap else random.sample(rows, cap)

    def _none(self, ident: int, code: int) -> Decoded:
        c = self.view.crop
        empty = torch.zeros((0, 3, c, c), dtype=torch.uint8)
        info = {"group": "", "grades": [], "mos": torch.zeros(0), "mos_raw": torch.zeros(0)}
        return (
            empty,
            torch.zeros((0, 5), dtype=torch.float64),
            torch.zeros(0, dtype=torch.long),
            [],
            info,
            ident,
            code,
        )

    @staticmethod
    def collate(samples: list[Decoded]) -> tuple:
        """Group samples -> (photos [N, ...], pair labels, ids [B], codes [B]); the pairs' indices
        point into the batch's photos (`idx`) and into their group (`local`)."""
        photos, pairs, ranks, names, infos, ids, codes = zip(*samples, strict=True)
        sizes = torch.tensor([len(p) for p in photos])
        offsets = torch.cumsum(sizes, 0) - sizes
        n_pairs = [len(p) for p in pairs]
        local = torch.cat(pairs)[:, :2].long()
        labels = {
            "idx": local + torch.repeat_interleave(offsets, torch.tensor(n_pairs)).unsqueeze(1),
            "local": local,
            "meta": torch.cat(pairs)[:, 2:].float(),  # p, rank_i, rank_j
            "pair_series": torch.repeat_interleave(torch.tensor(ids), torch.tensor(n_pairs)),
            "photo_series": torch.repeat_interleave(torch.tensor(ids), sizes),
            "photo_index": torch.cat([torch.arange(n) for n in sizes.tolist()]),
            "photo_rank": torch.cat(ranks),
            "photo_grade": torch.tensor(
                [GRADE_CODES.get(g, -1) for i in infos for g in i["grades"]], dtype=torch.long
            ),
            "photo_mos": torch.cat([i["mos"] for i in infos]),
            "photo_mos_raw": torch.cat([i["mos_raw"] for i in infos]),
            "photo_group": [i["group"] for i, n in zip(infos, sizes.tolist(), strict=True) for _ in range(n)],
            "members": [n for group in names for n in group],
        }
        return torch.cat(photos), labels, torch.tensor(ids), torch.tensor(codes)


def _info(label: dict, n: int) -> dict:
    """A group's extras: its name, each photo's grade ("good", "bad", "") and MOS (raw, and
    normalised to 0..1 by the label's mos_scale; NaN where unknown)."""
    raw = torch.tensor([m if m is not None else float("nan") for m in label.get("mos") or [None] * n])
    lo, hi = label.get("mos_scale") or (0.0, 1.0)
    return {
        "group": str(label.get("group", "")),
        "grades": list(label.get("grades") or [""] * n),
        "mos": (raw - lo) / (hi - lo),
        "mos_raw": raw,
    }


def batch_rows(labels: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's pair rows [P, 6] (series, i, j, p, rank_i, rank_j; float64, i and j within the
    group) and photo rows [N, 4] (series, index, rank, grade; int64), on the CPU."""
    pairs = torch.cat(
        [labels["pair_series"][:, None].double(), labels["local"].double(), labels["meta"].double().cpu()], 1
    )
    photos = torch.stack([labels[k] for k in ("photo_series", "photo_index", "photo_rank", "photo_grade")], 1)
    return pairs, photos


def pair_loss(logits: torch.Tensor, p: torch.Tensor, opts) -> tuple[torch.Tensor, int]:
    """(summed loss, pairs counted) of pair logits against preference ratios `p`, per `pairs` options.

    bce/soft: every pair, target p; bce/hard and hinge: ties (p = 0.5) left out, target p > 0.5.
    """
    if opts.loss == "bce" and opts.target == "soft":
        return F.binary_cross_entropy_with_logits(logits, p, reduction="sum"), len(p)
    decided = p != 0.5
    logits, won = logits[decided], (p[decided] > 0.5).float()
    if opts.loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, won, reduction="sum"), len(won)
    return F.relu(opts.margin - (2 * won - 1) * logits).sum(), len(won)


class PairwiseTask:
    """The pairwise task (`task: pairwise`), as `training` calls it."""

    name = "pairwise"
    select_metrics = ("pair_accuracy", "loss")
    history_keys = (
        "pair_accuracy",
        "pair_accuracy_se",
        "log_loss",
        "confident_accuracy",
        "series_top1",
        "kendall_tau",
        "human_ceiling",
        "n_pairs",
    )

    def decoder(self, preset: Callable, crop_size: int, scale: Scale, train: bool, cfg=None) -> PairDecoder:
        """The group decoder; the geometry comes from `cfg.pairs.view` (`preset` is the score task's)."""
        return PairDecoder(make_view(cfg, train), cfg.pairs.max_pairs_per_group if train else 0)

    collate = staticmethod(PairDecoder.collate)

    def prepare(self, batch: tuple, ctx: StepContext) -> Prepared:
        """Photos normalised on the device; the pair labels beside them (bad groups gave no photos)."""
        photos, labels, _, valid = batch
        valid = valid if valid.dtype == torch.bool else valid == 0
        n = int(valid.sum())
        if not len(photos):
            return Prepared(photos, labels, 0, len(valid) - n)
        moved = {k: (v.to(ctx.device) if k in ("idx", "meta", "photo_mos") else v) for k, v in labels.items()}
        return Prepared(to_input(photos, ctx), moved, n, len(valid) - n)

    def loss(self, model: nn.Module, p: Prepared, ctx: StepContext) -> tuple[torch.Tensor, int]:
        """Mean pair loss of the batch's pairs with |p - 0.5| >= pairs.min_confidence."""
        opts, target = ctx.options, p.labels["meta"][:, 0]
        keep = (target - 0.5).abs() >= opts.min_confidence - 1e-9
        aux = opts.head == "unit" and opts.mos_weight > 0
        with autocast(ctx.device, ctx.amp):
            out = (
                model(p.x, p.labels["idx"][keep], with_mos=aux) if aux else model(p.x, p.labels["idx"][keep])
            )
        logits, mos = out if aux else (out, None)
        total, n = pair_loss(logits.float(), target[keep], opts)
        loss = total / max(n, 1)
        if mos is not None:  # the auxiliary MOS regression, on the photos that have a MOS
            known = torch.isfinite(p.labels["photo_mos"])
            err = (mos.float() - p.labels["photo_mos"].nan_to_num()) ** 2
            loss = loss + opts.mos_weight * (err * known).sum() / known.sum().clamp_min(1)
        return loss, n

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, loader, ctx: StepContext, advance=None, warmup: bool = False
    ) -> dict:
        """Scores of every photo and P of every pair (the configured loss over all pairs)."""
        model.eval()
        out: dict[str, list] = {
            k: [] for k in ("pairs", "logits", "photos", "scores", "mos", "members", "groups")
        }
        loss_sum, loss_n, n, corrupt, model_s, start = 0.0, 0, 0, 0, 0.0, time.perf_counter()
        for batch in loader:
            p = self.prepare(batch, ctx)
            corrupt += p.corrupt
            if p.n == 0:
                continue
            t0 = time.perf_counter()
            logits, scores = _pair_outputs(model, p, ctx)
            model_s += time.perf_counter() - t0
            total, units = pair_loss(logits, p.labels["meta"][:, 0], ctx.options)
            loss_sum, loss_n, n = loss_sum + float(total), loss_n + units, n + p.n
            lab = p.labels
            pair_rows, photo_rows = batch_rows(lab)
            out["pairs"].append(pair_rows)
            out["logits"].append(logits.double().cpu())
            out["photos"].append(photo_rows)
            out["scores"].append(scores.double().cpu())
            out["mos"].append(lab["photo_mos_raw"].double())
            out["members"] += lab["members"]
            out["groups"] += lab["photo_group"]
            if advance is not None:
                advance(p.n)
        arrays = {
            k: (torch.cat(v).numpy() if v and k not in ("members", "groups") else v) for k, v in out.items()
        }
        return {
            **arrays,
            "loss_sum": loss_sum,
            "loss_n": loss_n,
            "n": n,
            "corrupt": corrupt,
            "seconds": time.perf_counter() - start,
            "model_seconds": model_s,
        }

    def merge(self, parts: list[dict]) -> dict:
        """Ranks' results joined, pairs sorted by (series, i, j) and photos by (series, index)."""
        full = [q for q in parts if q["n"]]
        merged = pass_totals(parts, "loss_n")
        merged["n_images"] = sum(len(q["scores"]) if q["n"] else 0 for q in parts)  # photos, for speeds
        if not full:
            return merged
        pairs = np.concatenate([q["pairs"] for q in full])
        logits = np.concatenate([q["logits"] for q in full])
        order = np.lexsort((pairs[:, 2], pairs[:, 1], pairs[:, 0]))
        photos = np.concatenate([q["photos"] for q in full])
        scores = np.concatenate([q["scores"] for q in full])
        members = np.array([m for q in full for m in q["members"]], dtype=object)
        groups = np.array([g for q in full for g in q["groups"]], dtype=object)
        mos = np.concatenate([q["mos"] for q in full])
        porder = np.lexsort((photos[:, 1], photos[:, 0]))
        return {
            **merged,
            "pairs": pairs[order],
            "logits": logits[order],
            "photos": photos[porder],
            "scores": scores[porder],
            "members": members[porder],
            "groups": groups[porder],
            "mos": mos[porder],
        }

    def summarise(
        self, merged: dict, ctx: StepContext, threshold: float | None, final: bool = False
    ) -> tuple:
        """(metrics, {"": pairs table, "_photos": photos table}) in the run-folder contract."""
        if not merged["n"]:
            return {"n": 0}, {}
        pairs, photos = merged["pairs"], merged["photos"]
        pairs_df = pd.DataFrame(
            {
                "series": pairs[:, 0].astype(np.int64),
                "i": pairs[:, 1].astype(np.int64),
                "j": pairs[:, 2].astype(np.int64),
                "p_true": pairs[:, 3],
                "rank_i": pairs[:, 4].astype(np.int64),
                "rank_j": pairs[:, 5].astype(np.int64),
                "p_pred": 1.0 / (1.0 + np.exp(-merged["logits"])),
            }
        )
        photos_df = pd.DataFrame(
            {
                "series": photos[:, 0].astype(np.int64),
                "index": photos[:, 1].astype(np.int64),
                "member": merged["members"].astype(str),
                "score": merged["scores"],
                "rank": photos[:, 2].astype(np.int64),
            }
        )
        found = {"n": int(merged["n"]), **pair_metrics(pairs_df, photos_df)}
        if (photos[:, 3] >= 0).any():  # culling folders (photos graded good/bad): folder, grade, MOS
            _add_folders(pairs_df, photos_df, merged, photos[:, 3])
            found.update(folder_metrics(pairs_df, photos_df))
        return found, {"": pairs_df, "_photos": photos_df}

    def metrics_line(self, found: dict, select_metric: str) -> str:
        """pair accuracy +- its standard error, beside the human ceiling; log-loss, top-1, tau."""
        get = lambda k: found.get(k, math.nan)  # noqa: E731
        if "auc_mean" in found:  # culling folders: p is 1 for every pair, there is no human ceiling
            return (
                f"pair acc {get('pair_accuracy'):.3f} ± {get('pair_accuracy_se'):.3f}  "
                f"macro {get('pair_accuracy_macro'):.3f}  AUC {get('auc_mean'):.3f}  "
                f"tau-MOS {get('kendall_tau_mos'):.3f}"
            )
        return (
            f"pair acc {get('pair_accuracy'):.3f} ± {get('pair_accuracy_se'):.3f} "
            f"(human {get('human_ceiling'):.3f})  log-loss {get('log_loss'):.4f}  "
            f"top-1 {get('series_top1'):.3f}  tau {get('kendall_tau'):.3f}"
        )


def _add_folders(pairs: pd.DataFrame, photos: pd.DataFrame, merged: dict, grades: np.ndarray) -> None:
    """The folder columns of a culling run's tables: group (pairs, photos), grade and mos (photos)."""
    photos["group"] = merged["groups"].astype(str)
    photos["grade"] = np.where(grades == 1, "good", np.where(grades == 0, "bad", ""))
    photos["mos"] = merged["mos"]
    group_of = dict(zip(photos["series"], photos["group"], strict=False))
    pairs["group"] = pairs["series"].map(group_of).astype(str)


def _pair_outputs(model: nn.Module, p: Prepared, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(pair logits [P], photo scores [N]) in float32. A concat head has no score of its own: a
    photo's score is then the mean logit of its pairs, as winner."""
    idx = p.labels["idx"]
    with autocast(ctx.device, ctx.amp):
        emb = model.head_input(p.x)
        logits = model.pair_logits(emb, idx).float()
        if model.pair_head != "concat":
            return logits, model.forward_head(emb).float().reshape(-1)
    n = len(p.x)
    sums = (
        torch.zeros(n, device=logits.device)
        .index_add_(0, idx[:, 0], logits)
        .index_add_(0, idx[:, 1], -logits)
    )
    counts = torch.zeros(n, device=logits.device).index_add_(
        0, idx.flatten(), torch.ones(idx.numel(), device=logits.device)
    )
    return logits, sums / counts.clamp_min(1)


PAIRWISE = PairwiseTask()
