"""What the shard tests read back from a folder of group-sample shards (PhotoTriage series, culling
folders, EPIC-KITCHENS segments): imported by those test files (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path

from avakit.dataset.samples import read_shard


def samples(out: Path) -> dict[str, dict]:
    """key -> {"split", "label", "images": member names} of every sample in the folder's shards."""
    found = {}
    for tar in sorted(out.glob("*.tar")):
        for s in read_shard(tar):
            images = sorted(k for k in s if k.endswith(".jpg"))
            found[s["__key__"]] = {
                "split": tar.name.split("-")[0],
                "label": json.loads(s["json"]),
                "images": images,
            }
    return found


def digests(out: Path) -> dict[str, bytes]:
    """Shard file name -> its bytes (reruns must be byte-identical)."""
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}
