"""The pairwise task's pieces: one geometry for a whole series, the losses against the soft ratio,
the hard winner and a hinge, collation of group samples into in-batch pairs, and bad samples."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from avakit.dataset.samples import Reason
from avakit.tasks.pairwise import PairDecoder, PairView, pair_loss


def opts(**kw) -> SimpleNamespace:
    return SimpleNamespace(**{"loss": "bce", "target": "soft", "margin": 1.0, "min_confidence": 0.0, **kw})


def test_same_crop_takes_one_place_and_one_flip_for_the_series() -> None:
    torch.manual_seed(0)
    # two photos of different sizes whose pixel values encode their own relative x position
    a = (torch.linspace(0, 255, 120).round().to(torch.uint8)).expand(3, 80, 120).clone()
    b = (torch.linspace(0, 255, 90).round().to(torch.uint8)).expand(3, 60, 90).clone()
    view = PairView("same_crop", resize=60, crop=40, train=True, flip=True)
    for _ in range(10):
        out = view([a, b])
        assert out.shape == (2, 3, 40, 40)
        # the same relative place and the same flip: both rows run the same way, from similar values
        da, db = (
            out[0, 0, 0, -1].int() - out[0, 0, 0, 0].int(),
            out[1, 0, 0, -1].int() - out[1, 0, 0, 0].int(),
        )
        assert (da > 0) == (db > 0)
        assert abs(int(out[0, 0, 0, 0]) - int(out[1, 0, 0, 0])) <= 8


def test_full_view_keeps_the_whole_frame() -> None:
    img = torch.zeros(3, 50, 100, dtype=torch.uint8)
    img[:, :, :10] = 255  # a bright left edge survives: no crop removes the framing
    out = PairView("full", resize=64, crop=32, train=False, flip=True)([img, img])
    assert out.shape == (2, 3, 32, 32) and out[0, 0, :, 0].float().mean() > 200


def test_losses_against_soft_hard_and_hinge_targets() -> None:
    logits, p = torch.tensor([2.0, -1.0, 0.3]), torch.tensor([0.9, 0.5, 0.2])
    total, n = pair_loss(logits, p, opts())
    assert n == 3 and total == pytest.approx(
        float(torch.nn.functional.binary_cross_entropy_with_logits(logits, p, reduction="sum"))
    )
    total, n = pair_loss(logits, p, opts(target="hard"))  # the tie is left out
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([2.0, 0.3]), torch.tensor([1.0, 0.0]), reduction="sum"
    )
    assert n == 2 and total == pytest.approx(float(expected))
    total, n = pair_loss(logits, p, opts(loss="hinge", margin=1.0))  # max(0, 1 - 2) + max(0, 1 + 0.3)
    assert n == 2 and total == pytest.approx(1.3)


def _sample(key: str, pairs: list, members: int = 2, jpg: bytes | None = None) -> dict:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (40, 30), (90, 120, 200)).save(buf, "JPEG")
    label = {
        "key": key,
        "kind": "pairs",
        "image_id": int(key),
        "group": key,
        "members": [f"{key}-{k + 1:02d}.JPG" for k in range(members)],
        "pairs": pairs,
        "source": "t",
    }
    sample = {"__key__": key, "json": json.dumps(label).encode()}
    sample.update({f"{k:03d}.jpg": jpg if jpg is not None else buf.getvalue() for k in range(members)})
    return sample


def test_collation_points_pairs_into_the_batch_and_counts_bad_groups() -> None:
    decoder = PairDecoder(PairView("full", 32, 24, train=False, flip=False))
    good3 = decoder(_sample("000007", [[0, 1, 0.8, 1, 2], [2, 1, 0.3, 3, 2]], members=3))
    bad_json = decoder(_sample("000008", [[0, 0, 0.5, 1, 1]]))  # i == j
    bad_jpg = decoder(_sample("000009", [[0, 1, 0.6, 1, 2]], jpg=b"no jpeg"))
    good2 = decoder(_sample("000010", [[1, 0, 0.1, 2, 1]]))
    assert bad_json[-1] == Reason.PAIRS and bad_jpg[-1] == Reason.IMAGE and good3[-1] == 0
    photos, labels, ids, codes = PairDecoder.collate([good3, bad_json, bad_jpg, good2])
    assert photos.shape == (5, 3, 24, 24) and codes.tolist() == [0, int(Reason.PAIRS), int(Reason.IMAGE), 0]
    assert labels["idx"].tolist() == [[0, 1], [2, 1], [4, 3]]  # the second series starts at photo 3
    assert labels["pair_series"].tolist() == [7, 7, 10] and labels["photo_rank"].tolist() == [1, 2, 3, 1, 2]
    assert labels["members"][3] == "000010-01.JPG"
