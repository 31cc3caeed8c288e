"""`avakit audit`: every fault of a culling set gives one line naming its file and the right exit code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from avakit.cli.app import app
from avakit.dataset import folders_dupes
from avakit.dataset.folders_audit import plan_audit, run_audit
from avakit.dataset.synthetic_folders import FAULTS, SyntheticFolders, make_synthetic_folders

runner = CliRunner()
# fault -> (exit code, check): a non-sRGB profile is only a warning
EXPECTED = {
    "corrupt": (1, "decode"),
    "small": (1, "size"),
    "profile": (0, "profile"),
    "duplicate": (1, "duplicate"),
    "near_duplicate": (1, "near duplicate"),
    "empty_bad": (1, "folder"),
    "unlisted": (1, "splits"),
}


def _audit(data: Path, tmp_path: Path, *extra: str) -> tuple[int, list[str], dict]:
    """Run the CLI; exit code, the finding lines on screen, the JSON report."""
    report = tmp_path / "audit.json"
    result = runner.invoke(app, ["audit", str(data), "--report", str(report), *extra])
    lines = [ln for ln in result.output.splitlines() if ln.startswith(("error [", "warning ["))]
    return result.exit_code, lines, json.loads(report.read_text()) if report.exists() else {}


def _make(tmp_path: Path, faults: tuple[str, ...] = (), n: int = 6) -> SyntheticFolders:
    return make_synthetic_folders(tmp_path / "data", n_folders=n, seed=3, faults=faults)


def test_clean_set_passes(tmp_path: Path) -> None:
    data = _make(tmp_path)
    report = tmp_path / "audit.json"
    result = runner.invoke(
        app, ["audit", str(data.files), "--splits", str(data.splits), "--report", str(report)]
    )
    assert result.exit_code == 0, result.output
    assert "ok: no errors" in result.output
    content = json.loads(report.read_text())
    assert content["errors"] == content["warnings"] == 0 and content["findings"] == []


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_is_one_line_naming_its_file(tmp_path: Path, fault: str) -> None:
    data = _make(tmp_path, (fault,))
    where = data.faults[fault].removeprefix("training_files/")
    code, lines, report = _audit(data.root, tmp_path)  # the parent of training_files/
    want_code, check = EXPECTED[fault]
    assert code == want_code, lines
    assert len(lines) == 1, lines
    assert f"[{check}] {where}:" in lines[0]
    assert [f["file"] for f in report["findings"]] == [where]
    assert report["checks"][check]["errors" if want_code else "warnings"] == 1


def test_near_copies_within_a_folder_are_bursts(tmp_path: Path) -> None:
    data = _make(tmp_path)
    good = sorted((data.files / "shoot_000" / "good").glob("*.jpg"))[0]
    near = Image.open(good).resize((310, 232))
    near.save(data.files / "shoot_000" / "bad" / "burst.jpg", quality=85)
    code, lines, _ = _audit(data.files, tmp_path, "--splits", str(data.splits))
    assert code == 0 and lines == []


def test_copies_within_a_split_or_folder_are_warnings(tmp_path: Path) -> None:
    data = _make(tmp_path)  # shoot_000..003 are train
    source = sorted((data.files / "shoot_000" / "good").glob("*.jpg"))[0]
    shutil.copy(source, data.files / "shoot_000" / "good" / "zz_again.jpg")
    Image.open(source).resize((312, 234)).save(data.files / "shoot_001" / "good" / "near.jpg")
    code, lines, report = _audit(data.root, tmp_path)
    assert code == 0
    assert sorted(f["check"] for f in report["findings"]) == ["duplicate", "near duplicate"]
    assert any(ln.startswith("warning [duplicate] shoot_000/good/zz_again.jpg:") for ln in lines), lines
    assert any(ln.startswith("warning [near duplicate] shoot_001/good/near.jpg:") for ln in lines), lines


def test_splits_problems_and_imbalance(tmp_path: Path) -> None:
    data = _make(tmp_path)
    splits = json.loads(data.splits.read_text())
    splits["test"] += [splits["train"][0], "shoot_404"]  # listed twice; listed but missing
    data.splits.write_text(json.dumps(splits))
    bad = sorted((data.files / "shoot_001" / "bad").glob("*.jpg"))
    good = sorted((data.files / "shoot_001" / "good").glob("*.jpg"))[0]
    for k in range(4 * len(bad) + 1 - len(list(good.parent.glob("*.jpg")))):
        Image.open(good).rotate(90 * (k + 1), expand=True).save(good.parent / f"extra_{k}.jpg")
    (good.parent / "notes.txt").write_text("not a photo")
    code, lines, report = _audit(data.root, tmp_path)
    assert code == 1
    text = "\n".join(lines)
    assert "error [splits] shoot_000: listed 2 times" in text
    assert "error [splits] shoot_404: listed in splits.json (test) but no such folder" in text
    assert "warning [imbalance] shoot_001:" in text and "beyond 4:1" in text
    assert "warning [folder] shoot_001/good/notes.txt: not a photo" in text
    assert report["folders"]["shoot_001"]["bad"] == len(bad)
    assert report["folders"]["shoot_001"]["good"] == 4 * len(bad) + 1


def test_report_holds_every_finding_and_folder_counts(tmp_path: Path) -> None:
    data = _make(tmp_path, ("corrupt", "small", "profile"))
    code, _, report = _audit(data.root, tmp_path)
    assert code == 1
    assert report["errors"] == 2 and report["warnings"] == 1 and report["min_side"] == 224
    first = report["folders"]["shoot_000"]
    assert first["split"] == "train" and first["errors"] == 2 and first["warnings"] == 1
    assert set(report["folders"]) == {f"shoot_{k:03d}" for k in range(6)}
    assert {f["severity"] for f in report["findings"]} == {"error", "warning"}
    assert all(set(f) == {"severity", "check", "file", "detail"} for f in report["findings"])


def test_min_side_option(tmp_path: Path) -> None:
    data = _make(tmp_path)
    code, lines, _ = _audit(data.root, tmp_path, "--min-side", "300")
    assert code == 1 and lines and all("[size]" in ln for ln in lines)


def test_lines_on_screen_are_capped(tmp_path: Path) -> None:
    data = _make(tmp_path)
    for k in range(60):
        (data.files / "shoot_002" / "bad" / f"note_{k:02d}.txt").write_text("x")
    result = runner.invoke(app, ["audit", str(data.root), "--report", str(tmp_path / "a.json")])
    assert result.exit_code == 0
    assert "... 10 more in the report" in result.output
    assert len(json.loads((tmp_path / "a.json").read_text())["findings"]) == 60


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "invalid JSON"),
        ("[]", "expected a JSON object"),
        ('{"train": [], "val": []}', "no 'test' list"),
        ('{"train": ["a/b"], "val": [], "test": []}', "train[0]: not a folder name"),
        ('{"train": [], "val": [], "test": [], "dev": []}', "unknown key 'dev'"),
    ],
)
def test_bad_splits_file_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    data = _make(tmp_path, n=3)
    data.splits.write_text(text)
    result = runner.invoke(app, ["audit", str(data.root), "--report", str(tmp_path / "a.json")])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "a.json").exists()


def test_bad_root_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["audit", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "not a folder" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["audit", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no splits.json" in result.output


def test_near_pairs_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    hashes = [rng.random(folders_dupes.HASH_BITS) < 0.5 for _ in range(7)]
    hashes.append(hashes[1].copy())
    hashes[-1][:5] = ~hashes[-1][:5]
    monkeypatch.setattr(folders_dupes, "_BLOCK", 3)
    assert list(folders_dupes.near_pairs(hashes, 10)) == [(1, 7, 5)]
    assert list(folders_dupes.near_pairs(hashes, 4)) == []


def test_library_plan_then_run(tmp_path: Path) -> None:
    data = _make(tmp_path, ("duplicate",))
    plan = plan_audit(data.files, data.splits)
    seen: list[int] = []
    result = run_audit(plan, progress=seen.append, workers=1)
    assert len(seen) == len(plan.photos) and result.errors == 1
    assert result.findings[0].line().startswith("error [duplicate] ")
