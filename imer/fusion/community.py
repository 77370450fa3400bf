"""Importer for the community (GCNet / MoMKE / ComP) dataset layout.

The layout is a *label pickle* plus one folder per feature type with one ``<utt_id>.npy`` per
utterance::

    IEMOCAP_features_raw_4way.pkl   [videoIDs, videoLabels, videoSpeakers, videoSentences,
                                     trainVid, testVid]
    CMUMOSI_features_raw_2way.pkl   [videoIDs, videoLabels, videoSpeakers, videoSentences,
                                     trainVids, valVids, testVids]       (also CMU-MOSEI)
    wav2vec-large-c-UTT/<utt>.npy   1-D, or [T, D] (averaged over time here, as GCNet does)
    manet_UTT/<utt>/<face>.npy      IEMOCAP video can be a folder of face tracks: averaged

Safety: a pickle can run arbitrary code when loaded. This module never calls ``pickle.load``
on a path it found by itself: the caller passes the label file on purpose (``--labels``), and it
is read by :class:`_RestrictedUnpickler`, which only allows the builtins and numpy array
reconstruction these files need. A file that needs anything else is refused unless the user
also passes ``trust_pickle=True`` (CLI ``--trust-pickle``).

Departure from GCNet: an utterance with no feature file becomes *missing* with reason
``no_feature`` instead of a zero vector that looks like data.
"""

from __future__ import annotations

import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imer.errors import BadInput
from imer.fusion.data import FeatureSet
from imer.types import MODALITY_NAMES, MissingReason, TaskKind, TaskSpec

IEMOCAP4_LABELS = ("happy", "sad", "neutral", "angry")  # GCNet: hap(+exc), sad, neu, ang
IEMOCAP6_LABELS = ("happy", "sad", "neutral", "angry", "excited", "frustrated")

_ALLOWED_GLOBALS = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("_codecs", "encode"),  # Python-2 era byte strings
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names code beyond plain data: only loadable when the user trusts it."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise _ForbiddenGlobal(f"global {module}.{name} is not allowed")


def read_pickle(path: str | Path, trust_pickle: bool = False):
    """Load a label pickle the user named; restricted to data types unless ``trust_pickle``."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: label pickle not found")
    raw = path.read_bytes()
    try:
        return _RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except _ForbiddenGlobal as e:
        if not trust_pickle:
            raise BadInput(
                f"{path}: this pickle needs more than plain data to load ({e}). Pickles can run code; "
                "if you trust this file, pass --trust-pickle."
            ) from None
    except Exception as e:  # truncated or not a pickle at all
        raise BadInput(f"{path}: not a readable label pickle ({type(e).__name__}: {e})") from None
    try:  # only reached with trust_pickle=True, on a file the user named
        return pickle.loads(raw, encoding="latin1")
    except Exception as e:
        raise BadInput(f"{path}: not a readable label pickle ({type(e).__name__}: {e})") from None


@dataclass
class CommunityLabels:
    """The contents of a label pickle, in dialogue order."""

    dialogues: dict[str, list[str]]  # dialogue id -> utterance ids in order
    labels: dict[str, list]  # dialogue id -> per-utterance label
    speakers: dict[str, list[str]]
    sentences: dict[str, list[str]]
    splits: dict[str, str]  # dialogue id -> train/valid/test
    task: TaskSpec
    source: str

    def utterance_ids(self) -> list[str]:
        return [u for d in self.dialogues.values() for u in d]

    def transcripts(self) -> dict[str, str]:
        return {u: str(s) for d, us in self.dialogues.items() for u, s in zip(us, self.sentences[d])}


def _task_for(path: Path, labels: dict) -> TaskSpec:
    values = [v for vs in labels.values() for v in vs]
    name = path.name.lower()
    is_float = any(isinstance(v, (float, np.floating)) and not float(v).is_integer() for v in values)
    if "mosi" in name or "mosei" in name or is_float:
        return TaskSpec(TaskKind.REGRESSION, ("sentiment",))
    k = int(max(values)) + 1
    if "6way" in name or k == 6:
        names = IEMOCAP6_LABELS
    elif "4way" in name or k == 4:
        names = IEMOCAP4_LABELS
    else:
        names = tuple(f"class{i}" for i in range(k))
    return TaskSpec(TaskKind.CLASSIFICATION, names)


def read_labels(path: str | Path, trust_pickle: bool = False) -> CommunityLabels:
    """Parse a GCNet-layout label pickle (IEMOCAP 4/6-way, CMU-MOSI, CMU-MOSEI)."""
    path = Path(path)
    obj = read_pickle(path, trust_pickle=trust_pickle)
    if not isinstance(obj, (list, tuple)) or len(obj) not in (6, 7):
        raise BadInput(
            f"{path}: expected a list of 6 (IEMOCAP) or 7 (MOSI/MOSEI) entries "
            f"[videoIDs, videoLabels, videoSpeakers, videoSentences, train, (valid,) test], got {type(obj).__name__}"
            + (f" of length {len(obj)}" if hasattr(obj, "__len__") else "")
        )
    video_ids, video_labels, video_speakers, video_sentences = obj[:4]
    if len(obj) == 6:
        split_sets = {"train": obj[4], "test": obj[5]}
    else:
        split_sets = {"train": obj[4], "valid": obj[5], "test": obj[6]}
    splits: dict[str, str] = {}
    for name, vids in split_sets.items():
        for v in vids:
            splits[v] = name
    dialogues = {}
    for vid in sorted(video_ids, key=lambda v: (splits.get(v, "z"), v)):
        dialogues[vid] = [str(u) for u in video_ids[vid]]
    labels = {v: list(video_labels[v]) for v in dialogues}
    task = _task_for(path, labels)
    return CommunityLabels(
        dialogues=dialogues,
        labels=labels,
        speakers={v: [str(s) for s in video_speakers[v]] for v in dialogues},
        sentences={v: [str(s) for s in video_sentences[v]] for v in dialogues},
        splits={v: splits.get(v, "") for v in dialogues},
        task=task,
        source=path.name,
    )


def _load_feature(folder: Path, uid: str) -> np.ndarray | None:
    """One utterance's vector: ``uid.npy`` (1-D or [T, D] -> mean over T) or a folder of faces."""
    f = folder / f"{uid}.npy"
    arrays = []
    if f.is_file():
        arrays = [np.load(f, allow_pickle=False)]
    elif (folder / uid).is_dir():
        arrays = [np.load(p, allow_pickle=False) for p in sorted((folder / uid).glob("*.npy"))]
    vecs = []
    for a in arrays:
        a = np.asarray(a, dtype=np.float32)
        if a.size == 0:
            continue
        # [D] or [1, D] or [T, D] (or [1, T, D]): rows of D, averaged below. No squeeze: D may be 1.
        vecs.append(a.reshape(-1, a.shape[-1]) if a.ndim >= 2 else a.reshape(1, -1))
    if not vecs:
        return None
    return np.concatenate(vecs).mean(0)


def import_community(
    labels: CommunityLabels,
    feature_dirs: dict[str, str | Path | None],
    progress=None,
) -> FeatureSet:
    """Build a :class:`FeatureSet` from labels plus per-modality ``.npy`` folders.

    Args:
        labels: from :func:`read_labels`.
        feature_dirs: modality -> folder (or None: the modality is absent for every utterance).
        progress: optional callback ``progress(done, total)``.
    """
    uids = labels.utterance_ids()
    n = len(uids)
    feats: dict[str, np.ndarray] = {}
    present = np.zeros((n, 3), dtype=bool)
    reasons = np.full((n, 3), MissingReason.NO_FEATURE.value, dtype=object)
    extractors = {}
    total = n * sum(1 for m in MODALITY_NAMES if feature_dirs.get(m))
    done = 0
    for j, m in enumerate(MODALITY_NAMES):
        folder = feature_dirs.get(m)
        if not folder:
            feats[m] = np.zeros((n, 1), np.float32)
            extractors[m] = {"name": "none"}
            continue
        folder = Path(folder)
        if not folder.is_dir():
            raise BadInput(f"{m} feature folder {folder} does not exist")
        vecs: list[np.ndarray | None] = []
        for uid in uids:
            try:
                vecs.append(_load_feature(folder, uid))
            except (ValueError, OSError, EOFError) as e:  # object array needing pickle, truncated file, ...
                reason = "it holds Python objects that need pickle" if "pickle" in str(e) else f"{type(e).__name__}: {e}"
                raise BadInput(f"{folder / uid}: unreadable feature file ({reason})") from None
            done += 1
            if progress and done % 256 == 0:
                progress(done, total)
        dims = {v.shape[-1] for v in vecs if v is not None}
        if not dims:
            raise BadInput(f"{m}: no feature file in {folder} matches any utterance id (e.g. {uids[0]}.npy)")
        if len(dims) > 1:
            raise BadInput(f"{m}: feature files in {folder} have different sizes {sorted(dims)}")
        d = dims.pop()
        arr = np.zeros((n, d), np.float32)
        for i, v in enumerate(vecs):
            if v is not None:
                arr[i] = v
                present[i, j] = True
                reasons[i, j] = MissingReason.PRESENT.value
        feats[m] = arr
        extractors[m] = {"name": f"community:{folder.name}", "config": {"folder": folder.name}}
    if progress:
        progress(total, total)
    speakers, dialogues, order, splits, ys = [], [], [], [], []
    for vid, us in labels.dialogues.items():
        for k, _ in enumerate(us):
            speakers.append(labels.speakers[vid][k] or vid)
            dialogues.append(vid)
            order.append(k)
            splits.append(labels.splits[vid])
            ys.append(labels.labels[vid][k])
    return FeatureSet(
        ids=uids,
        feats=feats,
        present=present,
        reasons=reasons,
        labels=np.asarray(ys),
        task=labels.task,
        speakers=speakers,
        dialogues=dialogues,
        order=np.asarray(order),
        splits=splits,
        extractors=extractors,
    )


_SESSION = re.compile(r"^Ses0?(\d+)")


def iemocap_session(dialogue_id: str) -> int:
    """'Ses03M_impro08b' -> 3 (IEMOCAP's five recording sessions)."""
    m = _SESSION.match(dialogue_id)
    if not m:
        raise BadInput(f"{dialogue_id!r} is not an IEMOCAP dialogue id (SesNN...)")
    return int(m.group(1))


def session_folds(fs: FeatureSet) -> list[tuple[str, FeatureSet]]:
    """IEMOCAP's 5-fold leave-one-session-out protocol: fold k tests on session k, trains on the rest."""
    sessions = np.array([iemocap_session(d) for d in fs.dialogues])
    folds = []
    for s in sorted(set(sessions.tolist())):
        out = fs.subset(np.arange(len(fs)))
        out.splits = ["test" if x == s else "train" for x in sessions]
        folds.append((f"session{s}", out))
    return folds
