"""The ``imer`` command line: one Typer app, thin commands, heavy imports inside them."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from imer.errors import ImerError

app = typer.Typer(
    name="imer",
    help="Incomplete multimodal emotion recognition: features in, emotion labels out, even with missing streams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Selection(str, Enum):
    valid = "valid"
    test = "test"


class CV(str, Enum):
    sessions = "sessions"


class BatchMode(str, Enum):
    dialogue = "dialogue"
    utterance = "utterance"


JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
ThreadsOpt = Annotated[
    Optional[int],
    typer.Option(help="CPU threads for torch (default: one per core). On a busy machine 1 is often faster."),
]


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


@app.command()
def methods(as_json: JsonOpt = False) -> None:
    """List the registered fusion methods."""
    from imer.fusion.base import METHODS

    rows = [{"name": n, "description": METHODS.get(n).description, "stages": list(METHODS.get(n).stages)} for n in METHODS.names()]
    if as_json:
        from imer.cli.render import print_json

        print_json(rows)
        return
    from rich.table import Table

    from imer.cli.render import out_console

    t = Table(title="fusion methods")
    t.add_column("name")
    t.add_column("stages")
    t.add_column("description")
    for r in rows:
        t.add_row(r["name"], " → ".join(r["stages"]), r["description"])
    out_console.print(t)


@app.command("import-community")
def import_community_cmd(
    labels: Annotated[Path, typer.Option(help="Label pickle you trust, e.g. IEMOCAP_features_raw_4way.pkl. Pickles can run code: it is read with a restricted unpickler that only accepts plain data.")],
    out: Annotated[Path, typer.Option(help="Folder for the imer feature store.")],
    audio: Annotated[Optional[Path], typer.Option(help="Folder of <utt_id>.npy audio features.")] = None,
    text: Annotated[Optional[Path], typer.Option(help="Folder of <utt_id>.npy text features.")] = None,
    video: Annotated[Optional[Path], typer.Option(help="Folder of <utt_id>.npy (or <utt_id>/*.npy) video features.")] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow a label pickle that needs arbitrary code to load. Only for files you trust.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Convert the GCNet/MoMKE/ComP layout (label pickle + .npy folders) into an imer feature store."""
    from imer.cli.progress import bar
    from imer.fusion.community import import_community, read_labels
    from imer.fusion.data import save_store

    lab = read_labels(labels, trust_pickle=trust_pickle)
    with bar("reading features", quiet=as_json) as update:
        fs = import_community(lab, {"audio": audio, "text": text, "video": video}, progress=update)
    save_store(fs, out)
    summary = {"out": str(out), **fs.summary()}
    _report(summary, as_json, "imported")


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="imer feature store (from 'imer extract' or 'imer import-community').")],
    method: Annotated[str, typer.Option(help="Fusion method; see 'imer methods'.")] = "comp",
    out: Annotated[Path, typer.Option(help="Folder for the model bundle.")] = Path("runs/model"),
    missing_rate: Annotated[Optional[float], typer.Option(help="Train under GCNet random missing rate MR (0.0-0.7), masks redrawn per epoch.")] = None,
    condition: Annotated[Optional[str], typer.Option(help="Train under a fixed condition instead: a, t, v, at, av, tv or atv.")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs over all stages (ComP splits them 50/50).")] = 100,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-4,
    weight_decay: Annotated[float, typer.Option(help="Adam L2 penalty.")] = 1e-5,
    batch_size: Annotated[Optional[int], typer.Option(help="Dialogues (or utterances) per batch; default 32 / 256.")] = None,
    batch_mode: Annotated[Optional[BatchMode], typer.Option(help="Batch whole dialogues or single utterances; default: the method's.")] = None,
    patience: Annotated[int, typer.Option(help="Stop a stage after this many epochs without improvement (0 = never).")] = 30,
    selection: Annotated[Selection, typer.Option(help="Select the best epoch on 'valid' (held-out training dialogues when the data has no valid split) or on 'test' (the official ComP protocol; optimistic).")] = Selection.valid,
    seed: Annotated[int, typer.Option(help="Seed for weights, batches and masks.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    set_: Annotated[list[str], typer.Option("--set", help="Method option KEY=VALUE, repeatable, e.g. --set momentum=0.5 --set use_gm=false.")] = [],
    config: Annotated[Optional[Path], typer.Option(help="JSON file with method options (overridden by --set).")] = None,
    evaluate_after: Annotated[bool, typer.Option("--evaluate/--no-evaluate", help="Print the missing-rate table on the test split when done.")] = True,
    mask_seeds: Annotated[int, typer.Option(help="Evaluation mask seeds per missing rate.")] = 3,
    cv: Annotated[Optional[CV], typer.Option(help="'sessions': IEMOCAP 5-fold leave-one-session-out (the community protocol); one bundle per fold in OUT/sessionK, table averaged over folds.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a fusion method on a feature store and save a model bundle."""
    from imer.cli.progress import TrainProgress
    from imer.errors import BadInput
    from imer.fusion.base import parse_overrides
    from imer.fusion.data import load_store
    from imer.fusion.experiment import average_rows, run_experiment
    from imer.fusion.trainer import TrainConfig

    if missing_rate is not None and condition is not None:
        raise BadInput("give --missing-rate or --condition, not both")
    options = _read_options(config)
    options.update(parse_overrides(set_, method))
    if mask_seeds < 1:
        raise BadInput("--mask-seeds must be at least 1")
    fs = load_store(data)
    cfg = TrainConfig(
        epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
        batch_mode=batch_mode.value if batch_mode else None, patience=patience or None,
        seed=seed, device=device, missing_rate=(missing_rate or 0.0) if condition is None else None,
        condition=condition, selection=selection.value,
    )
    cfg.validate()
    if cv is not None:
        from imer.fusion.community import session_folds

        folds = session_folds(fs)
    else:
        folds = [("", fs)]
    summaries, tables = [], []
    for name, part in folds:
        where = out / name if name else out
        if name and not as_json:
            from imer.cli.render import err_console

            err_console.print(f"[bold]fold {name}[/bold]: test on {part.splits.count('test')} utterances")
        with TrainProgress(quiet=as_json) as prog:
            res = run_experiment(
                part, method, cfg, options, out=where, evaluate=evaluate_after,
                mask_seeds=tuple(range(mask_seeds)), progress=prog.update, eval_progress=prog.evaluation,
                meta={"data": str(data), "fold": name or None},
            )
        summaries.append({**res.summary(), "out": str(where), **({"fold": name} if name else {})})
        if res.rows:
            tables.append(res.rows)
    task = fs.task
    summary = summaries[0] if cv is None else {"method": method, "cv": cv.value, "folds": summaries}
    if tables:
        rows = tables[0] if cv is None else average_rows(tables, task)
        summary["test"] = rows
        if not as_json:
            what = "test split" if cv is None else f"mean over {len(tables)} leave-one-session-out folds"
            _print_table(rows, task, f"{method} on {data.name} ({what}; selected on {summaries[0]['selection_split']})")
    _report(summary, as_json, "trained", skip=("test", "best", "folds"))


@app.command()
def extract(
    path: Annotated[Optional[Path], typer.Argument(help="A media file or a folder (searched recursively). Optional with --manifest.")] = None,
    manifest: Annotated[Optional[Path], typer.Option(help="CSV or JSON manifest with columns id, path and optionally start, end, transcript, label, speaker, dialogue, split.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the feature store (what 'imer train --data' reads).")] = Path("feats"),
    audio: Annotated[str, typer.Option(help="Audio backend: egemaps (offline), wav2vec2, or none.")] = "egemaps",
    text: Annotated[str, typer.Option(help="Text backend: minilm (offline), deberta, or none.")] = "minilm",
    video: Annotated[str, typer.Option(help="Video backend: faceprint (offline), manet, or none.")] = "faceprint",
    set_: Annotated[list[str], typer.Option("--set", help="Backend option BACKEND.KEY=VALUE, e.g. --set wav2vec2.model=/models/w2v --set manet.checkpoint=manet.pth.")] = [],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Utterances per extractor batch (across files).")] = 16,
    fps: Annotated[float, typer.Option(help="Video frames sampled per second for face detection.")] = 2.0,
    max_frames: Annotated[int, typer.Option(help="At most this many frames per utterance.")] = 16,
    force: Annotated[bool, typer.Option("--force", help="Re-extract even when cached.")] = False,
    cache: Annotated[Optional[Path], typer.Option(help="Cache folder (default OUT/.cache); share it between runs and machines.")] = None,
    holdout: Annotated[float, typer.Option(help="When the data names no split: share of speakers (or files) put in 'test'.")] = 0.2,
    no_cues: Annotated[bool, typer.Option("--no-cues", help="Do not split files into utterances at subtitle cues.")] = False,
    decode_workers: Annotated[int, typer.Option(help="Threads decoding media ahead of the extractors.")] = 2,
    task: Annotated[str, typer.Option(help="How to read labels: auto (fractional numbers = regression), classification, regression.")] = "auto",
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Raw video / audio / transcripts -> cached per-utterance features -> a feature store."""
    from imer.cli.progress import StageProgress
    from imer.errors import BadInput
    from imer.extractors.base import EXTRACTORS
    from imer.extractors.run import ExtractConfig, extract_features
    from imer.pipeline.ingest import DecodeConfig, discover, read_manifest
    from imer.types import Modality

    if path is None and manifest is None:
        raise BadInput("give a media file or folder, or --manifest FILE")
    if manifest is None and path is not None and path.is_dir():
        # A folder that carries its own manifest (manifest.csv / manifest.json) uses it.
        found = [path / n for n in ("manifest.csv", "manifest.json") if (path / n).is_file()]
        manifest = found[0] if found else None
    if manifest is not None:
        utts = read_manifest(manifest)
    else:
        if not path.exists():
            raise BadInput(f"{path}: no such file or folder")
        utts = discover(path, cues_as_utterances=not no_cues)
    backends = {Modality.AUDIO: audio, Modality.TEXT: text, Modality.VIDEO: video}
    for m, name in backends.items():
        if name != "none" and name not in EXTRACTORS:
            raise BadInput(f"--{m.value} {name!r}: choose none or one of {[n for n in EXTRACTORS.names() if EXTRACTORS.get(n).modality == m]}")
    options: dict[str, dict] = {}
    for item in set_:
        key, eq, value = item.partition("=")
        backend, dot, field = key.partition(".")
        if not (eq and dot and field):
            raise BadInput(f"--set {item!r}: use BACKEND.KEY=VALUE, e.g. --set wav2vec2.layers=[-1]")
        from imer.fusion.base import parse_overrides

        if backend not in EXTRACTORS:
            raise BadInput(f"--set {item!r}: no backend {backend!r}; backends: {', '.join(EXTRACTORS.names())}")
        options.setdefault(backend, {}).update(parse_overrides([f"{field}={value}"]))
    for k, v in list(options.items()):
        options[k] = {f: (tuple(x) if isinstance(x, list) else x) for f, x in v.items()}
    _set_threads(threads)
    if task not in ("auto", "classification", "regression"):
        raise BadInput(f"--task {task!r}: use auto, classification or regression")
    cfg = ExtractConfig(
        backends={m: (None if n == "none" else n) for m, n in backends.items()},
        decode_workers=decode_workers,
        task=task,
        options=options,
        decode=DecodeConfig(fps=fps, max_frames=max_frames),
        device=device,
        batch_size=batch_size,
        force=force,
        cache_dir=cache,
        holdout=holdout,
    )
    with StageProgress(quiet=as_json) as prog:
        fs, summary = extract_features(utts, out, cfg, progress=prog.update)
    if as_json:
        from imer.cli.render import print_json

        print_json(summary.to_dict())
        return
    from imer.cli.render import extract_table, out_console

    out_console.print(extract_table(summary))


@app.command()
def predict(
    paths: Annotated[Optional[list[Path]], typer.Argument(help="Media files or folders (one prediction per media file).")] = None,
    model: Annotated[Path, typer.Option(help="Model bundle folder written by 'imer train'.")] = Path("runs/model"),
    no_audio: Annotated[bool, typer.Option("--no-audio", help="Do not use the audio stream.")] = False,
    no_text: Annotated[bool, typer.Option("--no-text", help="Do not use the transcript.")] = False,
    no_video: Annotated[bool, typer.Option("--no-video", help="Do not use the video (faces).")] = False,
    text: Annotated[Optional[str], typer.Option(help="Transcript to use for every input (or alone, with no media).")] = None,
    transcript: Annotated[Optional[Path], typer.Option(help="Transcript file (.txt/.srt/.vtt/.json) to use for every input.")] = None,
    start: Annotated[Optional[float], typer.Option(help="Segment start in seconds.")] = None,
    end: Annotated[Optional[float], typer.Option(help="Segment end in seconds.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    cache: Annotated[Optional[Path], typer.Option(help="Feature cache folder to reuse between calls.")] = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Emotion label and class probabilities for each clip; says which streams were used and why not the others."""
    from imer.cli.progress import StageProgress
    from imer.predict import Predictor

    disable = {m for m, off in (("audio", no_audio), ("text", no_text), ("video", no_video)) if off}
    _set_threads(threads)
    predictor = Predictor(model, device=device, cache_dir=cache, disable=disable)
    with StageProgress(quiet=as_json) as prog:
        results = predictor.predict(paths or [], disable=disable, text=text, transcript=transcript, start=start, end=end, progress=prog.update)
    if as_json:
        from imer.cli.render import clean_nans, print_json

        print_json(clean_nans({"model": str(model), "predictions": [r.to_dict() for r in results]}))
        return
    from imer.cli.render import out_console, predictions_table

    out_console.print(predictions_table(results))


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="Model bundle folder written by 'imer train'.")],
    data: Annotated[Path, typer.Option(help="imer feature store to evaluate on.")],
    split: Annotated[str, typer.Option(help="Split to evaluate ('test', 'valid', 'train' or 'all').")] = "test",
    mask_seeds: Annotated[int, typer.Option(help="Evaluation mask seeds per missing rate (mean ± std).")] = 3,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Print WA/UA (or Acc/F1/MAE) per missing rate 0.0-0.7 and per fixed condition."""
    from imer.errors import BadInput
    from imer.fusion.bundle import check_compatible, load_bundle
    from imer.fusion.data import load_store
    from imer.fusion.trainer import resolve_device

    dev = str(resolve_device(device))
    model, std, cfg = load_bundle(checkpoint, dev)
    fs = load_store(data)
    check_compatible(cfg, fs.dims, fs.extractors)
    part = fs if split == "all" else fs.split(split)
    if len(part) == 0:
        raise BadInput(f"{data}: split {split!r} is empty; splits here: {sorted(set(fs.splits))}")
    rows = _table(model, std.apply(part), list(range(mask_seeds)), None, None, dev, as_json)
    if as_json:
        from imer.cli.render import clean_nans, print_json

        print_json(clean_nans({"checkpoint": str(checkpoint), "data": str(data), "split": split, "rows": rows}))
    else:
        _print_table(rows, model.task, f"{cfg['method']} on {data.name} ({split} split)")


# ---------------------------------------------------------------------- helpers
def _read_options(path: Path | None) -> dict:
    """Method options from a JSON file (an object of option: value)."""
    from imer.errors import BadInput

    if path is None:
        return {}
    try:
        options = json.loads(path.read_text())
    except OSError as e:
        raise BadInput(f"--config {path}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise BadInput(f"--config {path}: not valid JSON ({e})") from None
    if not isinstance(options, dict):
        raise BadInput(f"--config {path}: must be a JSON object of method options, e.g. {{\"momentum\": 0.3}}")
    return options


def _table(model, fs, seeds, batch_mode, batch_size, device, quiet) -> list[dict]:
    from imer.cli.progress import bar
    from imer.fusion.evaluation import evaluate_table

    with bar("evaluating", quiet=quiet) as update:
        return evaluate_table(model, fs, mask_seeds=seeds, batch_mode=batch_mode, batch_size=batch_size, device=device, progress=update)


def _print_table(rows, task, title) -> None:
    from imer.cli.render import out_console, results_table
    from imer.fusion.metrics import headline_metrics

    out_console.print(results_table(rows, headline_metrics(task), title))


def _report(summary: dict, as_json: bool, verb: str, skip: tuple[str, ...] = ()) -> None:
    from imer.cli.render import clean_nans, out_console, print_json

    if as_json:
        print_json(clean_nans(summary))
        return
    for k, v in summary.items():
        if k not in skip:
            out_console.print(f"[bold]{k}[/bold]: {v}")


def main() -> None:
    """Console entry point: user errors print one clear line, not a traceback."""
    try:
        app()
    except ImerError as e:
        from imer.cli.render import err_console

        err_console.print(f"[red]error:[/red] {e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
