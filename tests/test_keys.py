"""String sample keys and hash-stable, group-aware splits (avakit.dataset.keys)."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import pytest

from avakit.dataset.keys import MAX_KEY_LENGTH, hash_split, sample_key, unique_keys
from avakit.errors import AvakitError

SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


@pytest.mark.parametrize(
    ("image", "key"),
    [
        ("a.jpg", "a"),
        ("IMG_0001.JPG", "IMG_0001"),
        ("sub/a.jpg", "sub_a"),
        ("sub\\deep/a.b.c.png", "sub_deep_a_b_c"),
        ("./x/y.bmp", "x_y"),
        ("Photo 1 (copy).jpeg", "Photo_1_copy_"),
        ("café-été.jpg", "cafe-ete"),
        ("tab\tand\nnewline\x00.jpg", "tab_and_newline_"),
        ("no_extension", "no_extension"),
        (".hidden", "_hidden"),
        ("图片.jpg", "img"),
        ("...jpg", "img"),
        ("", "img"),
        ("i04_05_3.bmp", "i04_05_3"),
    ],
)
def test_sample_key_is_readable_and_safe(image: str, key: str) -> None:
    assert sample_key(image) == key
    assert SAFE.match(key)


def test_long_names_are_capped_and_stay_apart() -> None:
    a, b = "x" * 300 + "a.jpg", "x" * 300 + "b.jpg"
    ka, kb = sample_key(a), sample_key(b)
    assert len(ka) == len(kb) == MAX_KEY_LENGTH
    assert ka != kb and SAFE.match(ka) and SAFE.match(kb)


def test_unique_keys_only_suffix_the_colliding_ones() -> None:
    images = ["a.jpg", "a.png", "a b.jpg", "a_b.jpg", "c.jpg", "sub/c.jpg"]
    keys = unique_keys(images)
    assert len(set(keys)) == len(images)
    assert keys[4:] == ["c", "sub_c"]
    for key, plain in zip(keys[:4], ["a", "a", "a_b", "a_b"], strict=True):
        assert re.fullmatch(rf"{plain}_[0-9a-f]{{8}}", key), key


def test_unique_keys_do_not_depend_on_row_order() -> None:
    images = [f"d{i % 3}/img{i % 40}.{'jpg' if i % 2 else 'png'}" for i in range(120)]
    images = sorted(set(images))
    shuffled = images[:]
    random.Random(3).shuffle(shuffled)
    by_image = dict(zip(images, unique_keys(images), strict=True))
    assert dict(zip(shuffled, unique_keys(shuffled), strict=True)) == by_image
    assert len(set(by_image.values())) == len(images)
    # a subset keeps every key, except that an image left without a rival gets its plain key back
    subset = [im for im in images if not im.startswith("d0/")]
    plain = Counter(sample_key(im) for im in subset)
    for im, key in zip(subset, unique_keys(subset), strict=True):
        assert key == (by_image[im] if plain[sample_key(im)] > 1 else sample_key(im))


def test_a_hashed_key_never_takes_another_images_plain_key() -> None:
    from avakit.dataset.keys import _digest

    clash = f"a_{_digest('a.jpg')[:8]}.jpg"  # an image literally named like a's hashed key
    keys = unique_keys(["a.jpg", "a.png", clash])
    assert len(set(keys)) == 3
    assert keys[2] == f"a_{_digest('a.jpg')[:8]}"


def test_an_image_listed_twice_is_a_user_error() -> None:
    with pytest.raises(AvakitError, match="listed twice"):
        unique_keys(["a.jpg", "b.jpg", "a.jpg"])


def _keys(n: int) -> list[str]:
    return [f"img{i:05d}" for i in range(n)]


def test_removing_rows_moves_no_other_image() -> None:
    keys = _keys(900)
    before = hash_split(keys, 0.1, 0.1, seed=0)
    gone = set(random.Random(1).sample(keys, 4))
    after = hash_split([k for k in keys if k not in gone], 0.1, 0.1, seed=0)
    assert set(after) == set(keys) - gone
    assert sum(before[k] != after[k] for k in after) == 0
    # adding rows moves none either
    grown = hash_split(keys + [f"new{i}" for i in range(50)], 0.1, 0.1, seed=0)
    assert all(grown[k] == before[k] for k in keys)


def test_ratios_are_close_to_the_asked_ones() -> None:
    split = hash_split(_keys(10_000), 0.15, 0.1, seed=7)
    counts = Counter(split.values())
    assert abs(counts["val"] / 10_000 - 0.15) <= 0.02
    assert abs(counts["test"] / 10_000 - 0.1) <= 0.02
    assert abs(counts["train"] / 10_000 - 0.75) <= 0.02


def test_zero_ratios_put_everything_in_train() -> None:
    assert set(hash_split(_keys(200), 0.0, 0.0, seed=0).values()) == {"train"}


def test_the_seed_changes_the_assignment() -> None:
    keys = _keys(1000)
    a, b = hash_split(keys, 0.2, 0.2, seed=0), hash_split(keys, 0.2, 0.2, seed=1)
    assert a == hash_split(keys, 0.2, 0.2, seed=0)
    assert sum(a[k] != b[k] for k in keys) > 200


def test_groups_never_straddle_splits() -> None:
    keys = [f"ref{g:03d}_d{d:02d}" for g in range(200) for d in range(25)]
    groups = {k: k.split("_")[0] for k in keys}
    split = hash_split(keys, 0.2, 0.2, seed=3, groups=groups)
    per_group: dict[str, set[str]] = {}
    for k, s in split.items():
        per_group.setdefault(groups[k], set()).add(s)
    assert all(len(s) == 1 for s in per_group.values())
    assert Counter(next(iter(s)) for s in per_group.values()).keys() == {"train", "val", "test"}
    # a key without a group (None or "") is hashed on its own
    loose = hash_split(["x", "y"], 0.2, 0.2, seed=3, groups={"x": None, "y": ""})
    assert loose == hash_split(["x", "y"], 0.2, 0.2, seed=3)


def test_fixed_wins_over_the_hash_and_pulls_its_group() -> None:
    keys = _keys(300)
    free = hash_split(keys, 0.1, 0.1, seed=0)
    fixed = {k: "test" for k in keys[:50]} | {"not-a-key": "val"}
    split = hash_split(keys, 0.1, 0.1, seed=0, fixed=fixed)
    assert all(split[k] == "test" for k in keys[:50])
    assert all(split[k] == free[k] for k in keys[50:])
    assert "not-a-key" not in split
    groups = {"img00000": "g", "img00100": "g", "img00200": "g"}
    grouped = hash_split(keys, 0.1, 0.1, seed=0, groups=groups, fixed={"img00000": "val"})
    assert {grouped[k] for k in groups} == {"val"}


def test_fixed_members_of_one_group_in_two_splits_are_a_user_error() -> None:
    with pytest.raises(AvakitError, match="group 'g' straddles splits"):
        hash_split(
            ["a", "b"], 0.1, 0.1, seed=0, groups={"a": "g", "b": "g"}, fixed={"a": "train", "b": "test"}
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_ratio": 1.0}, "val_ratio must be in"),
        ({"test_ratio": -0.1}, "test_ratio must be in"),
        ({"val_ratio": 0.5, "test_ratio": 0.5}, "must be below 1"),
        ({"fixed": {"a": "holdout"}}, "not one of train, val, test"),
        ({"keys": ["a", "b", "a"]}, "listed twice"),
    ],
)
def test_bad_arguments_are_user_errors(kwargs: dict, message: str) -> None:
    args = {"keys": ["a", "b"], "val_ratio": 0.1, "test_ratio": 0.1, "seed": 0} | kwargs
    with pytest.raises(AvakitError, match=message):
        hash_split(**args)


def test_keys_round_trip_through_webdataset(tmp_path: Path) -> None:
    """Keys survive a real tar: webdataset cuts member names at the first dot (imports torch; fine here)."""
    import webdataset as wds

    images = [
        "sub/a.b.jpg",
        "sub/a b.jpg",
        "A.JPG",
        "a.png",
        "café.jpg",
        "x" * 250 + ".bmp",
        "图.jpg",
        ".hid",
    ]
    keys = unique_keys(images)
    tar = tmp_path / "keys-000000.tar"
    with wds.TarWriter(str(tar)) as sink:
        for key, image in zip(keys, images, strict=True):
            sink.write({"__key__": key, "txt": image.encode(), "json": b"{}"})
    read = [(s["__key__"], s["txt"].decode()) for s in wds.WebDataset(str(tar), shardshuffle=False)]
    assert read == list(zip(keys, images, strict=True))
