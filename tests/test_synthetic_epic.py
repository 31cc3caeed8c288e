"""The synthetic EPIC-KITCHENS layout: the real file names, columns and frame paths, class
imbalance with tail lists, the planted faults, determinism, and verb and noun cues that a per-frame
model can read after a random-resized crop and a flip."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avakit.dataset import epic
from avakit.dataset.epic_plan import frame_path
from avakit.dataset.synthetic_epic import SyntheticEpic, make_synthetic_epic


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> SyntheticEpic:
    return make_synthetic_epic(tmp_path_factory.mktemp("epic"))


def rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_real_files_columns_and_frame_layout(layout: SyntheticEpic) -> None:
    names = {p.name for p in layout.annotations.iterdir()}
    assert names == {
        epic.TRAIN_CSV,
        epic.VAL_CSV,
        epic.VERB_CSV,
        epic.NOUN_CSV,
        epic.UNSEEN_CSV,
        epic.TAIL_VERBS_CSV,
        epic.TAIL_NOUNS_CSV,
    }
    for name in (epic.TRAIN_CSV, epic.VAL_CSV):
        assert tuple(rows(layout.annotations / name)[0]) == epic.COLUMNS
    text = (layout.annotations / epic.VERB_CSV).read_text().splitlines()
    assert text[0] == "id,key,instances,category"
    assert text[1] == "0,take,['take'],action"  # one instance: unquoted, as in the real file
    assert text[2].startswith('1,put,"[')  # two: quoted
    assert len(layout.segments) == 4 * 2 * 10
    for s in layout.segments:
        for n in range(s.start, s.stop + 1):  # inclusive stop_frame
            assert (layout.frames / frame_path(s.participant, s.video, n)).is_file()
    with Image.open(layout.frames / frame_path("P01", "P01_01", 1)) as im:
        assert im.format == "JPEG" and im.size == (64, 48)


def test_splits_unseen_and_tail_lists(layout: SyntheticEpic) -> None:
    train = {s.participant for s in layout.segments if s.split == "train"}
    val = {s.participant for s in layout.segments if s.split == "val"}
    assert layout.unseen == ("P04",) and set(layout.unseen) == val - train
    assert rows(layout.annotations / epic.UNSEEN_CSV) == [["participant_id"], ["P04"]]
    assert rows(layout.annotations / epic.TAIL_NOUNS_CSV) == [["noun"], ["4"], ["5"]]
    counts = np.bincount([s.noun_class for s in layout.segments], minlength=6)
    assert counts[0] > counts[5]  # imbalanced: the head class is the most frequent
    assert counts[list(layout.tail_nouns)].sum() < counts[:2].sum()


def test_same_seed_same_files(layout: SyntheticEpic, tmp_path: Path) -> None:
    again = make_synthetic_epic(tmp_path / "again")
    for name in (epic.TRAIN_CSV, epic.VAL_CSV, epic.NOUN_CSV):
        assert (again.annotations / name).read_bytes() == (layout.annotations / name).read_bytes()
    f = frame_path("P02", "P02_01", 5)
    assert (again.frames / f).read_bytes() == (layout.frames / f).read_bytes()


def test_uid_column_and_no_lists(tmp_path: Path) -> None:
    e = make_synthetic_epic(tmp_path / "e", n_participants=2, segments_per_video=2, uid=True, lists=False)
    header = rows(e.annotations / epic.TRAIN_CSV)[0]
    assert header[0] == "uid" and tuple(header[1:]) == epic.COLUMNS
    assert not (e.annotations / epic.UNSEEN_CSV).exists()


def test_faults_are_planted(tmp_path: Path) -> None:
    e = make_synthetic_epic(
        tmp_path / "e", faults=("missing_frame", "missing_video", "bad_row", "corrupt_frame")
    )
    by_id = {s.narration_id: s for s in e.segments}
    s = by_id[e.faults["missing_frame"]]
    gone = [
        n
        for n in range(s.start, s.stop + 1)
        if not (e.frames / frame_path(s.participant, s.video, n)).exists()
    ]
    assert len(gone) == 1 and s.start < gone[0] < s.stop
    video = e.faults["missing_video"]
    assert not (e.frames / video[:3] / "rgb_frames" / video).exists()
    s = by_id[e.faults["corrupt_frame"]]
    assert not (e.frames / frame_path(s.participant, s.video, s.start)).read_bytes().startswith(b"\xff\xd8")
    last = rows(e.annotations / epic.TRAIN_CSV)[-1]
    assert last[0] == e.faults["bad_row"] and int(last[7]) < int(last[6])
    with pytest.raises(ValueError, match="unknown faults"):
        make_synthetic_epic(tmp_path / "x", faults=("nope",))


def _augment(im: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """A random-resized crop (scale 0.85-1, the clip task's) and a flip, back to 56x42."""
    w, h = im.size
    scale = rng.uniform(0.85, 1.0)
    cw, ch = round(w * np.sqrt(scale)), round(h * np.sqrt(scale))
    x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    out = im.crop((x, y, x + cw, y + ch)).resize((56, 42), Image.BILINEAR)
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(out, dtype=np.float32)


def _features(a: np.ndarray) -> np.ndarray:
    """Per frame: the mean colour of its saturated pixels (noun), and its mean absolute gradient
    across rows and across columns of the grey background (verb: stripes, checker, period)."""
    sat = a.max(axis=2) - a.min(axis=2)
    colour = a[sat > 80].mean(axis=0) if (sat > 80).any() else np.zeros(3)
    g = np.where(sat > 80, np.nan, a.mean(axis=2))
    dy, dx = np.nanmean(np.abs(np.diff(g, axis=0))), np.nanmean(np.abs(np.diff(g, axis=1)))
    return np.concatenate([colour / 255.0, [dy / 40.0, dx / 40.0]])


def test_verb_and_noun_are_readable_from_single_augmented_frames(layout: SyntheticEpic) -> None:
    """Nearest-centroid on simple per-frame features, fitted on train frames, scores val frames:
    both cues survive the crop and flip in every frame (a small CNN with average pooling sees more)."""
    rng = np.random.default_rng(0)
    feats: dict[str, list] = {"train": [], "val": []}
    for s in layout.segments:
        for n in (s.start, (s.start + s.stop) // 2, s.stop):
            with Image.open(layout.frames / frame_path(s.participant, s.video, n)) as im:
                feats[s.split].append(
                    (_features(_augment(im.convert("RGB"), rng)), s.verb_class, s.noun_class)
                )
    for which, cols in ((1, slice(3, 5)), (2, slice(0, 3))):
        x = np.array([f[0][cols] for f in feats["train"]])
        y = np.array([f[which] for f in feats["train"]])
        centroids = {c: x[y == c].mean(axis=0) for c in np.unique(y)}
        right = [
            min(centroids, key=lambda c: np.linalg.norm(f[0][cols] - centroids[c])) == f[which]
            for f in feats["val"]
        ]
        assert np.mean(right) > 0.9, (which, np.mean(right))
