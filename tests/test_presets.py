"""Dataset presets: tiny files in each release's real layout, read into the labels table's columns."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from avakit.dataset.presets import PRESETS, preset_frame, read_preset, tid_reference
from avakit.errors import AvakitError

KONIQ_HEADER = '"image_name","c1","c2","c3","c4","c5","c_total","MOS","SD","MOS_zscore"'


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def koniq(root: Path, rows: list[str], header: str = KONIQ_HEADER) -> Path:
    return write(root / "koniq10k_scores_and_distributions.csv", "\n".join([header, *rows]) + "\n")


def livec(
    root: Path, names: list[str], mos: list[float] | None = None, std: list[float] | None = None
) -> Path:
    data = root / "ChallengeDB_release" / "Data"
    data.mkdir(parents=True)
    n = len(names)
    savemat(
        data / "AllImages_release.mat", {"AllImages_release": np.array(names, dtype=object).reshape(-1, 1)}
    )
    mos = mos if mos is not None else [10.0 * i for i in range(n)]
    std = std if std is not None else [1.0 + i for i in range(n)]
    savemat(data / "AllMOS_release.mat", {"AllMOS_release": np.array([mos])})
    savemat(data / "AllStdDev_release.mat", {"AllStdDev_release": np.array([std])})
    return data


def test_registry_has_the_five_presets():
    assert set(PRESETS) == {"koniq10k", "spaq", "kadid10k", "livec", "tid2013"}
    for reader in PRESETS.values():
        assert "ROOT/" in (reader.__doc__ or "")  # the README-ready layout


def test_unknown_preset_and_missing_root(tmp_path):
    with pytest.raises(AvakitError, match="unknown preset 'ava'.*koniq10k"):
        preset_frame("ava", tmp_path)
    with pytest.raises(AvakitError, match="not a folder"):
        preset_frame("koniq10k", tmp_path / "nope")


def test_koniq10k_votes(tmp_path):
    koniq(
        tmp_path,
        [
            '"10004473376.jpg",0,1,45,63,5,114,3.8,0.6,77.4',
            '"10007357496.jpg",1,2,"x",0,0,3,2.0,0.5,20.1',
        ],
    )
    (tmp_path / "1024x768").mkdir()
    (tmp_path / "512x384").mkdir()
    pf = preset_frame("koniq10k", tmp_path)
    assert list(pf.frame.columns) == ["image", "votes_1", "votes_2", "votes_3", "votes_4", "votes_5"]
    assert pf.frame.iloc[0].tolist() == ["10004473376.jpg", "0", "1", "45", "63", "5"]
    assert pf.frame.iloc[1]["votes_3"] == "x"  # passed through: the labels table skips the row
    assert pf.scale == (1.0, 5.0) and pf.lower_is_better is False
    assert pf.lines == [2, 3]
    assert pf.files == [tmp_path / "koniq10k_scores_and_distributions.csv"]
    assert pf.images == tmp_path / "1024x768"


def test_koniq10k_small_images_folder_when_only_that_one(tmp_path):
    koniq(tmp_path, ['"a.jpg",0,1,2,3,4,10,3.0,1.0,50'])
    (tmp_path / "512x384").mkdir()
    assert preset_frame("koniq10k", tmp_path).images == tmp_path / "512x384"


def test_koniq10k_bad_inputs(tmp_path):
    with pytest.raises(AvakitError, match=r"koniq10k_scores_and_distributions\.csv: missing file"):
        preset_frame("koniq10k", tmp_path)
    koniq(tmp_path, ['"a.jpg",0,1,2,3,4'], header='"image_name","c1","c2","c3","c4","c6"')
    with pytest.raises(AvakitError, match=r"line 1: no column 'c5'"):
        preset_frame("koniq10k", tmp_path)
    koniq(tmp_path, ['"a.jpg",0,1,2,3,4,10,3.0,1.0,50', '"b.jpg",0,1,2'])
    with pytest.raises(AvakitError, match=r"distributions\.csv: line 3: 4 fields, expected 10"):
        preset_frame("koniq10k", tmp_path)
    write(tmp_path / "koniq10k_scores_and_distributions.csv", "\n\n")
    with pytest.raises(AvakitError, match="empty file"):
        preset_frame("koniq10k", tmp_path)
    (tmp_path / "koniq10k_scores_and_distributions.csv").write_bytes(
        (KONIQ_HEADER + "\n").encode() + b'"\xff.jpg",0,1,2,3,4,10,3.0,1.0,50\n'
    )
    with pytest.raises(AvakitError, match="line 2: not UTF-8"):
        preset_frame("koniq10k", tmp_path)


def test_spaq_mos_csv_and_bom(tmp_path):
    write(tmp_path / "mos.csv", "\ufeffImage name,MOS,Brightness\n00001.jpg,42.5,50\n\n00002.jpg,80,40\n")
    pf = preset_frame("spaq", tmp_path)
    assert list(pf.frame.columns) == ["image", "mos"]
    assert pf.frame["image"].tolist() == ["00001.jpg", "00002.jpg"]
    assert pf.frame["mos"].tolist() == ["42.5", "80"]
    assert pf.lines == [2, 4]  # the blank line 3 is not a row
    assert pf.scale == (0.0, 100.0) and pf.lower_is_better is False
    assert pf.images == tmp_path / "TestImage"


def test_spaq_first_csv_with_the_columns(tmp_path):
    write(tmp_path / "a_other.csv", "name,score\nx.jpg,1\n")
    (tmp_path / "a_binary.csv").write_bytes(b"\xff\xfe\x00\n")  # not the table: passed over
    write(tmp_path / "b_scores.csv", "image_name,MOS\n00003.jpg,12\n")
    write(tmp_path / "c_more.csv", "image_name,MOS\n00004.jpg,13\n")
    pf = preset_frame("spaq", tmp_path)
    assert pf.files == [tmp_path / "b_scores.csv"]
    assert pf.frame["image"].tolist() == ["00003.jpg"]


def test_spaq_bad_inputs(tmp_path):
    with pytest.raises(AvakitError, match=r"no SPAQ MOS table.*found no \.csv file"):
        preset_frame("spaq", tmp_path)
    write(tmp_path / "other.csv", "name,score\nx.jpg,1\n")
    with pytest.raises(AvakitError, match=r"no SPAQ MOS table.*found other\.csv"):
        preset_frame("spaq", tmp_path)
    write(tmp_path / "mos.csv", "Image,MOS\nx.jpg,1\n")  # mos.csv is taken as it is
    with pytest.raises(AvakitError, match=r"mos\.csv: line 1: no column 'Image name' or 'image_name'"):
        preset_frame("spaq", tmp_path)


def test_kadid10k_dmos_is_higher_better_with_groups(tmp_path):
    write(
        tmp_path / "dmos.csv",
        "dist_img,ref_img,dmos,var\nI01_01_01.png,I01.png,4.57,0.25\nI01_01_02.png,I01.png,4.33,-1\n"
        "I02_01_01.png,I02.png,2.0,abc\n",
    )
    pf = preset_frame("kadid10k", tmp_path)
    assert list(pf.frame.columns) == ["image", "mos", "std", "group"]
    assert pf.frame["image"].tolist() == ["I01_01_01.png", "I01_01_02.png", "I02_01_01.png"]
    assert pf.frame["mos"].tolist() == ["4.57", "4.33", "2.0"]
    assert pf.frame["std"].tolist() == [0.5, "-1", "abc"]  # a bad variance stays as written: a row skip
    assert pf.frame["group"].tolist() == ["I01.png", "I01.png", "I02.png"]
    assert pf.scale == (1.0, 5.0) and pf.lower_is_better is False
    assert pf.lines == [2, 3, 4] and pf.images == tmp_path / "images"


def test_kadid10k_bad_inputs(tmp_path):
    with pytest.raises(AvakitError, match=r"dmos\.csv: missing file"):
        preset_frame("kadid10k", tmp_path)
    write(tmp_path / "dmos.csv", "dist_img,ref_img,mos,var\na.png,b.png,1,0\n")
    with pytest.raises(AvakitError, match="no column 'dmos'"):
        preset_frame("kadid10k", tmp_path)
    write(tmp_path / "dmos.csv", "dist_img,ref_img,dmos,var\na.png,b.png,1,0\na2.png,b.png,1\n")
    with pytest.raises(AvakitError, match=r"dmos\.csv: line 3: 3 fields, expected 4"):
        preset_frame("kadid10k", tmp_path)


def test_livec_leaves_out_the_seven_training_examples(tmp_path):
    names = [f"t{i}.bmp" for i in range(7)] + ["10.JPG", "11.JPG", "12.bmp"]
    livec(tmp_path, names)
    pf = preset_frame("livec", tmp_path)
    assert list(pf.frame.columns) == ["image", "mos", "std"]
    assert pf.frame["image"].tolist() == ["10.JPG", "11.JPG", "12.bmp"]
    assert pf.frame["mos"].tolist() == [70.0, 80.0, 90.0]
    assert pf.frame["std"].tolist() == [8.0, 9.0, 10.0]
    assert pf.lines == [8, 9, 10]
    assert pf.scale == (0.0, 100.0) and pf.lower_is_better is False
    data = tmp_path / "ChallengeDB_release" / "Data"
    assert pf.files == [
        data / "AllImages_release.mat",
        data / "AllMOS_release.mat",
        data / "AllStdDev_release.mat",
    ]
    assert pf.images == tmp_path / "ChallengeDB_release" / "Images"


def test_livec_nan_mos_passes_through(tmp_path):
    livec(tmp_path, [f"{i}.bmp" for i in range(9)], mos=[1.0] * 8 + [float("nan")])
    assert math.isnan(preset_frame("livec", tmp_path).frame["mos"].iloc[1])


def test_livec_bad_inputs(tmp_path):
    with pytest.raises(AvakitError, match=r"AllImages_release\.mat: missing file"):
        preset_frame("livec", tmp_path)
    data = livec(tmp_path, [f"{i}.bmp" for i in range(9)])
    savemat(data / "AllMOS_release.mat", {"MOS": np.array([[1.0] * 9])})
    with pytest.raises(
        AvakitError, match=r"AllMOS_release\.mat: no variable 'AllMOS_release' \(found: MOS\)"
    ):
        preset_frame("livec", tmp_path)
    savemat(data / "AllMOS_release.mat", {"AllMOS_release": np.array([[1.0] * 8])})
    with pytest.raises(AvakitError, match="AllMOS_release has 8 entries, the image list has 9"):
        preset_frame("livec", tmp_path)
    (data / "AllStdDev_release.mat").write_text("not a mat file\n")
    savemat(data / "AllMOS_release.mat", {"AllMOS_release": np.array([[1.0] * 9])})
    with pytest.raises(AvakitError, match=r"AllStdDev_release\.mat: not a readable MATLAB file"):
        preset_frame("livec", tmp_path)


def test_tid2013_mos_with_names_and_groups(tmp_path):
    write(
        tmp_path / "mos_with_names.txt",
        "5.51429 i01_01_1.bmp\r\n5.56757 I01_01_2.bmp\r\n\r\n4.0 i25_24_5.bmp\r\n",
    )
    pf = preset_frame("tid2013", tmp_path)
    assert list(pf.frame.columns) == ["image", "mos", "group"]
    assert pf.frame["image"].tolist() == ["i01_01_1.bmp", "I01_01_2.bmp", "i25_24_5.bmp"]
    assert pf.frame["mos"].tolist() == ["5.51429", "5.56757", "4.0"]
    assert pf.frame["group"].tolist() == ["i01", "i01", "i25"]
    assert pf.lines == [1, 2, 4]
    assert pf.scale == (0.0, 9.0) and pf.lower_is_better is False
    assert pf.images == tmp_path / "distorted_images"
    assert tid_reference("I07.BMP") == "i07"


def test_tid2013_bad_inputs(tmp_path):
    with pytest.raises(AvakitError, match=r"mos_with_names\.txt: missing file"):
        preset_frame("tid2013", tmp_path)
    write(tmp_path / "mos_with_names.txt", "5.51429 i01_01_1.bmp\n5.5\n")
    with pytest.raises(AvakitError, match=r"mos_with_names\.txt: line 2: 1 fields, expected 2"):
        preset_frame("tid2013", tmp_path)
    write(tmp_path / "mos_with_names.txt", "5.51429 i01_01_1.bmp\n" + "x" * 5000 + "\n")
    with pytest.raises(AvakitError, match="line 2: line longer than"):
        preset_frame("tid2013", tmp_path)


def test_read_preset_passes_the_frame_to_table_from_frame(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("avakit.dataset.labels")
    fake.table_from_frame = lambda df, source, **kw: calls.append((df, source, kw)) or "table"
    monkeypatch.setitem(sys.modules, "avakit.dataset.labels", fake)
    write(tmp_path / "dmos.csv", "dist_img,ref_img,dmos,var\na.png,r.png,3.5,0.04\n")
    assert read_preset("kadid10k", tmp_path, strict=True) == "table"
    [(df, source, kw)] = calls
    assert source == "kadid10k" and df["image"].tolist() == ["a.png"]
    assert kw == {"scale": (1.0, 5.0), "lower_is_better": False, "strict": True, "lines": [2]}


def test_read_preset_makes_a_label_table(tmp_path):
    pytest.importorskip("avakit.dataset.labels")
    write(tmp_path / "mos_with_names.txt", "5.5 i01_01_1.bmp\nbad i01_01_2.bmp\n4.0 i02_01_1.bmp\n")
    table = read_preset("tid2013", tmp_path)
    assert table.kind == "mos" and table.scale == (0.0, 9.0) and table.higher_is_better
    assert [(r.line, r.image, r.mos, r.group) for r in table.rows] == [
        (1, "i01_01_1.bmp", 5.5, "i01"),
        (3, "i02_01_1.bmp", 4.0, "i02"),
    ]
    assert [(s.line, s.image) for s in table.skipped] == [(2, "i01_01_2.bmp")]
    assert table.source == "tid2013"
    with pytest.raises(AvakitError, match=r"(line |:)2\b.*bad mos"):
        read_preset("tid2013", tmp_path, strict=True)


def test_read_preset_votes_floats_and_a_bad_variance(tmp_path):
    pytest.importorskip("avakit.dataset.labels")
    koniq(tmp_path / "k", ['"a.jpg",0,1,45,63,5,114,3.8,0.6,77.4', '"b.jpg",1,2,"x",0,0,3,2.0,0.5,20.1'])
    table = read_preset("koniq10k", tmp_path / "k")
    assert table.kind == "votes" and table.k == 5 and table.scale == (1.0, 5.0)
    assert [(r.line, r.image, r.votes) for r in table.rows] == [(2, "a.jpg", (0, 1, 45, 63, 5))]
    assert [s.line for s in table.skipped] == [3]
    livec(tmp_path / "l", [f"{i}.bmp" for i in range(9)], mos=[50.0] * 8 + [float("nan")])
    table = read_preset("livec", tmp_path / "l")
    assert [(r.line, r.image, r.mos, r.std) for r in table.rows] == [(8, "7.bmp", 50.0, 8.0)]
    assert [s.line for s in table.skipped] == [9]
    write(tmp_path / "d" / "dmos.csv", "dist_img,ref_img,dmos,var\na.png,r.png,3.5,0.04\nb.png,r.png,3,abc\n")
    table = read_preset("kadid10k", tmp_path / "d")
    assert [(r.image, r.mos, r.std, r.group) for r in table.rows] == [("a.png", 3.5, 0.2, "r.png")]
    assert [s.line for s in table.skipped] == [3] and table.higher_is_better
