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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imer.errors import BadInput
from imer.progress import Progress, report
from imer.store.featureset import FeatureSet
from imer.store.spec import FeatureSpec
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


_DTYPE_KINDS = {"U": "text", "S": "bytes", "b": "booleans", "c": "complex numbers", "M": "dates", "m": "time spans", "V": "raw records"}


def _load_feature(folder: Path, uid: str) -> np.ndarray | None:
    """One utterance's vector: ``uid.npy`` (1-D or [T, D] -> mean over T) or a folder of faces."""
    f = folder / f"{uid}.npy"
    files: list[Path] = []
    if f.is_file():
        files = [f]
    elif (folder / uid).is_dir():
        files = sorted((folder / uid).glob("*.npy"))
    vecs = []
    for path in files:
        a = np.load(path, allow_pickle=False)
        # Strings ("0.5"), booleans and complex numbers would convert to float32 without a word.
        if a.dtype.kind not in "iuf":
            raise BadInput(
                f"{path}: the feature file holds {a.dtype} values ({_DTYPE_KINDS.get(a.dtype.kind, 'not numbers')}); "
                "features must be integer or floating-point numbers"
            )
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
    progress: Progress | None = None,
    meta: dict | None = None,
) -> FeatureSet:
    """Build a :class:`FeatureSet` from labels plus per-modality ``.npy`` folders.

    Args:
        labels: from :func:`read_labels`.
        feature_dirs: modality -> folder (or None: the modality is absent for every utterance).
        progress: optional progress hook (stage "reading features").
        meta: the ``imer_export.json`` of a folder written by :func:`export_community` (see
            :func:`read_export_meta`): restores row order, label names, and — for the modalities
            listed in its ``"restore"`` (those read from the export's own folders) — missing
            reasons, details and feature specs, so export -> import gives back the same store.
    """
    uids = labels.utterance_ids()
    n = len(uids)
    feats: dict[str, np.ndarray] = {}
    present = np.zeros((n, 3), dtype=bool)
    reasons = np.full((n, 3), MissingReason.NO_FEATURE.value, dtype=object)
    specs: dict[str, FeatureSpec | None] = {}
    total = n * sum(1 for m in MODALITY_NAMES if feature_dirs.get(m))
    done = 0
    for j, m in enumerate(MODALITY_NAMES):
        folder = feature_dirs.get(m)
        if not folder:
            feats[m] = np.zeros((n, 1), np.float32)
            specs[m] = None
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
            if done % 256 == 0:
                report(progress, "reading features", done, total)
        dims = {v.shape[-1] for v in vecs if v is not None}
        exported = (meta or {}).get("specs", {}).get(m) if m in _restored(meta) else None
        if not dims and exported:  # an exported modality that was missing everywhere (no file at all)
            dims = {int(exported["dim"])}
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
        specs[m] = FeatureSpec(name=f"community:{folder.name}", dim=d, config={"folder": folder.name})
    report(progress, "reading features", total, total)
    speakers, dialogues, order, splits, ys = [], [], [], [], []
    for vid, us in labels.dialogues.items():
        for k, _ in enumerate(us):
            speakers.append(labels.speakers[vid][k] or ("" if meta is not None else vid))
            dialogues.append(vid)
            order.append(k)
            splits.append(labels.splits[vid])
            ys.append(labels.labels[vid][k])
    fs = FeatureSet(
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
        specs=specs,
    )
    return fs if meta is None else _apply_meta(fs, meta)


# -- the way out: imer store -> GCNet layout ------------------------------------------------------
EXPORT_META = "imer_export.json"
EXPORT_FORMAT = "imer-community-export"


def _folder_name(m: str, spec: FeatureSpec) -> str:
    if spec.imported:
        return spec.name.split(":", 1)[1]
    return f"{spec.name}-{m}_UTT"


def export_community(fs: FeatureSet, out: str | Path, name: str = "imer", progress: Progress | None = None) -> dict:
    """Write ``fs`` in the GCNet layout, so the official code of other methods can train on it.

    Writes ``<name>_features_raw.pkl`` (plain lists and dicts only: ``[videoIDs, videoLabels,
    videoSpeakers, videoSentences, trainVid, testVid]``, plus ``valVid`` before ``testVid`` when
    the store has a validation split, as the MOSI files do), one folder of ``<utt_id>.npy`` per
    modality (absent entries get no file, as in the community data), and ``imer_export.json``
    with what the layout cannot say (missing reasons, feature specs, label names), which
    :func:`import_community` reads back. Transcripts are not part of a store: sentences are empty.

    Returns a summary: the label file, the feature folder per modality, counts.
    """
    from imer.fsutil import atomic_write_bytes, atomic_write_text
    import io
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    groups = fs.dialogue_groups()
    video_ids, video_labels, video_speakers, video_sentences = {}, {}, {}, {}
    split_of: dict[str, str] = {}
    for g in groups:
        vid = fs.dialogues[g[0]]
        names = {fs.splits[i] for i in g}
        if len(names) > 1:
            raise BadInput(
                f"dialogue {vid!r} has utterances in splits {sorted(names)}; the community layout gives each "
                "dialogue one split"
            )
        split_of[vid] = names.pop()
        video_ids[vid] = [fs.ids[i] for i in g]
        if fs.task.kind == TaskKind.CLASSIFICATION:
            video_labels[vid] = [int(fs.labels[i]) for i in g]
        else:
            video_labels[vid] = [float(fs.labels[i]) for i in g]
        video_speakers[vid] = [fs.speakers[i] for i in g]
        video_sentences[vid] = ["" for _ in g]
    by_split = {s: [v for v, x in split_of.items() if x == s] for s in ("train", "valid", "test")}
    content = [video_ids, video_labels, video_speakers, video_sentences, by_split["train"]]
    if by_split["valid"]:
        content.append(by_split["valid"])
    content.append(by_split["test"])
    label_file = out / f"{name}_features_raw.pkl"
    atomic_write_bytes(label_file, pickle.dumps(content, protocol=4))
    folders: dict[str, str | None] = {}
    total = len(fs) * sum(1 for m in MODALITY_NAMES if fs.specs.get(m) is not None)
    done = 0
    for j, m in enumerate(MODALITY_NAMES):
        spec = fs.specs.get(m)
        if spec is None:
            folders[m] = None
            continue
        folder = out / _folder_name(m, spec)
        folder.mkdir(parents=True, exist_ok=True)  # even when every entry is missing
        folders[m] = folder.name
        for i, uid in enumerate(fs.ids):
            done += 1
            if fs.present[i, j]:
                buf = io.BytesIO()
                np.save(buf, fs.feats[m][i], allow_pickle=False)
                atomic_write_bytes(folder / f"{uid}.npy", buf.getvalue())
            else:
                (folder / f"{uid}.npy").unlink(missing_ok=True)
            if done % 256 == 0:
                report(progress, "writing features", done, total)
    report(progress, "writing features", total, total)
    meta = {
        "format": EXPORT_FORMAT,
        "version": 1,
        "labels": label_file.name,
        "folders": folders,
        "task": fs.task.to_dict(),
        "specs": {m: (None if fs.specs.get(m) is None else fs.specs[m].to_dict()) for m in MODALITY_NAMES},
        "ids": list(fs.ids),
        "reasons": {uid: {m: str(fs.reasons[i, j]) for j, m in enumerate(MODALITY_NAMES) if not fs.present[i, j]} for i, uid in enumerate(fs.ids)},
        "details": {uid: {m: str(fs.details[i, j]) for j, m in enumerate(MODALITY_NAMES) if fs.details[i, j]} for i, uid in enumerate(fs.ids) if any(fs.details[i])},
    }
    atomic_write_text(out / EXPORT_META, json.dumps(meta, ensure_ascii=False))
    return {"out": str(out), "labels": str(label_file), "folders": folders, "utterances": len(fs), "dialogues": len(groups)}


def read_export_meta(label_file: str | Path) -> dict | None:
    """The ``imer_export.json`` beside a label pickle written by :func:`export_community`, if any."""
    import json

    from imer.fsutil import read_json_header

    f = Path(label_file).parent / EXPORT_META
    if not f.is_file():
        return None
    meta = read_json_header(f, EXPORT_FORMAT, 1, "export description", "export the store again", BadInput)
    if meta.get("labels") != Path(label_file).name:
        return None  # describes another label file in the same folder
    return meta


def _restored(meta: dict | None) -> set[str]:
    """Modalities whose features were read from the export's own folders (their specs and reasons apply)."""
    if meta is None:
        return set()
    return set(meta.get("restore", MODALITY_NAMES))


def _apply_meta(fs: FeatureSet, meta: dict) -> FeatureSet:
    """Restore what the GCNet layout loses: row order, reasons, details, specs, label names."""
    from imer.store.spec import spec_from_json

    try:
        index = {uid: i for i, uid in enumerate(fs.ids)}
        rows = np.asarray([index[uid] for uid in meta["ids"]], dtype=np.int64)
        out = fs.subset(rows)
        restored = _restored(meta)
        for i, uid in enumerate(out.ids):
            for j, m in enumerate(MODALITY_NAMES):
                if m not in restored:
                    continue
                if not out.present[i, j]:
                    out.reasons[i, j] = meta["reasons"].get(uid, {}).get(m, out.reasons[i, j])
                out.details[i, j] = meta.get("details", {}).get(uid, {}).get(m, "")
        task = TaskSpec.from_dict(meta["task"])
        specs = {
            m: (spec_from_json(meta["specs"][m]) if m in restored and out.specs.get(m) is not None else out.specs.get(m))
            for m in MODALITY_NAMES
        }
    except (KeyError, TypeError, ValueError) as e:
        raise BadInput(f"{EXPORT_META}: does not match the label file and features ({type(e).__name__}: {e}); export again") from None
    return FeatureSet(
        ids=out.ids, feats=out.feats, present=out.present, reasons=out.reasons, details=out.details,
        labels=out.labels, task=task, speakers=out.speakers, dialogues=out.dialogues, order=out.order,
        splits=out.splits, specs=specs,
    )


def import_folder(
    labels: str | Path,
    feature_dirs: dict[str, str | Path | None],
    out: str | Path | None = None,
    trust_pickle: bool = False,
    progress: Progress | None = None,
) -> FeatureSet:
    """``imer import-community``: read the label pickle and feature folders, write a store to ``out``.

    Beside a label file written by :func:`export_community`, its ``imer_export.json`` restores
    what the layout loses, and its feature folders are used for modalities not given.
    """
    from imer.store.format import save_store

    lab = read_labels(labels, trust_pickle=trust_pickle)
    meta = read_export_meta(labels)
    dirs = dict(feature_dirs)
    if meta is not None:
        restore = []
        for m, name in (meta.get("folders") or {}).items():
            given = dirs.get(m)
            if not given and name:
                dirs[m] = Path(labels).parent / name
            if (name and Path(dirs[m]).resolve() == (Path(labels).parent / name).resolve()) or (not name and not given):
                restore.append(m)  # the export's own features (or its switched-off modality): its record applies
        meta = {**meta, "restore": restore}
    fs = import_community(lab, dirs, progress=progress, meta=meta)
    if out is not None:
        save_store(fs, out)
    return fs
