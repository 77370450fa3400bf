"""The ``imer`` command line: one Typer app; each command is parse -> one library call -> render.

Heavy imports (torch, transformers) happen inside commands, so ``imer --help`` starts at once.
Defaults are read from the config dataclasses, never restated here.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from imer.config import default
from imer.devices import DEVICE_HELP, check_device_name
from imer.errors import BadInput, ImerError
from imer.extractors.run import OFFLINE_DEFAULTS, ExtractConfig
from imer.fusion.train_config import TrainConfig
from imer.pipeline.decode import DecodeConfig
from imer.store.compile import CompileConfig
from imer.types import Modality

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


class Task(str, Enum):
    auto = "auto"
    classification = "classification"
    regression = "regression"


def _device(value: str) -> str:
    try:
        return check_device_name(value)
    except BadInput as e:
        raise typer.BadParameter(str(e).split(": ", 1)[-1]) from None


JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
DeviceOpt = Annotated[str, typer.Option(help=DEVICE_HELP, callback=_device)]
ThreadsOpt = Annotated[
    Optional[int],
    typer.Option(help="CPU threads for torch (default: one per core). On a busy machine 1 is often faster."),
]
ModelOpt = Annotated[Path, typer.Option("--model", help="Model bundle folder (written by 'imer train').")]
# Old spellings of --model, kept working but out of the help.
OutAlias = Annotated[Optional[Path], typer.Option("--out", hidden=True)]
CheckpointAlias = Annotated[Optional[Path], typer.Option("--checkpoint", hidden=True)]


def _model_dir(model: Path | None, alias: Path | None, fallback: Path | None = None) -> Path:
    if model is not None and alias is not None and model != alias:
        raise BadInput(f"--model {model} and its old spelling name different folders ({alias}); give --model only")
    got = model if model is not None else alias if alias is not None else fallback
    if got is None:
        raise BadInput("give the model bundle folder with --model DIR")
    return got


def _backend_help(modality: Modality) -> str:
    """Help for --audio/--text/--video, from the registry (a new backend file appears here)."""
    from imer.extractors.base import EXTRACTORS, backends_for

    names = [f"{n} (offline)" if EXTRACTORS.get(n).offline else n for n in backends_for(modality)]
    return f"{modality.value.capitalize()} backend: {', '.join(names)}, or none. See 'imer extractors'."


def _check_backend(modality: Modality, name: str) -> str | None:
    from imer.extractors.base import EXTRACTORS, backends_for

    if name == "none":
        return None
    valid = backends_for(modality)
    if name not in EXTRACTORS:
        raise BadInput(f"--{modality.value} {name!r}: choose none or one of {valid}")
    if name not in valid:
        other = EXTRACTORS.get(name).modality.value
        raise BadInput(f"--{modality.value} {name!r} is a {other} backend; choose none or one of {valid}")
    return name


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


@app.command()
def methods(as_json: JsonOpt = False) -> None:
    """List the registered fusion methods."""
    from imer.fusion.base import METHODS

    from imer.fusion.train_config import resolve_lr

    def declared(cls) -> dict:
        spec = cls.declared_optimizer()
        return {"name": spec.name, "lr": resolve_lr(None, spec.lr)}

    rows = [
        {"name": n, "description": METHODS.get(n).description, "stages": list(METHODS.get(n).stages),
         "batch_mode": METHODS.get(n).default_batch_mode, "optimizer": declared(METHODS.get(n))}
        for n in METHODS.names()
    ]
    if as_json:
        from imer.cli.render import print_json

        print_json(rows)
        return
    from rich.table import Table

    from imer.cli.render import out_console

    t = Table(title="fusion methods")
    t.add_column("name")
    t.add_column("stages")
    t.add_column("default optimiser")
    t.add_column("description")
    for r in rows:
        t.add_row(r["name"], " → ".join(r["stages"]), f"{r['optimizer']['name']} lr {r['optimizer']['lr']:g}", r["description"])
    out_console.print(t)


@app.command()
def extractors(as_json: JsonOpt = False) -> None:
    """List the registered feature extractors (backends) per modality."""
    import dataclasses

    from imer.config import to_dict
    from imer.extractors.base import EXTRACTORS

    rows = []
    for n in EXTRACTORS.names():
        cls = EXTRACTORS.get(n)
        ex = cls()
        try:
            dim: int | None = ex.dim
        except Exception:  # noqa: BLE001 - a dim that needs the model (HF config) is unknown until loaded
            dim = None
        rows.append({
            "name": n,
            "modality": cls.modality.value,
            "kind": cls.kind,
            "offline": bool(cls.offline),
            "default": OFFLINE_DEFAULTS.get(cls.modality) == n,
            "dim": dim,
            "description": cls.description,
            "options": to_dict(ex.config) if dataclasses.is_dataclass(ex.config) else {},
        })
    if as_json:
        from imer.cli.render import print_json

        print_json(rows)
        return
    from imer.cli.render import extractors_table, out_console

    out_console.print(extractors_table(rows))


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
    """Convert the GCNet/MoMKE/ComP layout (label pickle + .npy folders) into an imer feature store.

    A folder written by 'imer export-community' also restores missing reasons and feature specs,
    and its feature folders are used when --audio/--text/--video are not given.
    """
    from imer.cli.progress import ProgressDisplay
    from imer.store.community import import_folder

    with ProgressDisplay(quiet=as_json) as prog:
        fs = import_folder(labels, {"audio": audio, "text": text, "video": video}, out, trust_pickle, progress=prog)
    _report({"out": str(out), **fs.summary()}, as_json)


@app.command("export-community")
def export_community_cmd(
    store: Annotated[Path, typer.Argument(help="imer feature store folder.")],
    out: Annotated[Path, typer.Option(help="Folder for the GCNet layout (label pickle + one .npy per utterance and feature folder).")],
    name: Annotated[str, typer.Option(help="Label file name prefix: NAME_features_raw.pkl.")] = "imer",
    as_json: JsonOpt = False,
) -> None:
    """Write a store in the GCNet layout, so the official code of other methods can train on imer's features."""
    from imer.cli.progress import ProgressDisplay
    from imer.store.community import export_community
    from imer.store.format import load_store

    fs = load_store(store)
    with ProgressDisplay(quiet=as_json) as prog:
        summary = export_community(fs, out, name=name, progress=prog)
    _report(summary, as_json)


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="imer feature store (from 'imer extract' or 'imer import-community').")],
    method: Annotated[str, typer.Option(help="Fusion method; see 'imer methods'.")] = "comp",
    model: Annotated[Optional[Path], typer.Option("--model", help="Folder for the model bundle (default: runs/model).")] = None,
    missing_rate: Annotated[Optional[float], typer.Option(help="Train under GCNet random missing rate MR (0.0-0.7), masks redrawn per epoch. Default: neither this nor --condition, i.e. every utterance under a rate drawn from 0.0-0.7 (robust to any pattern at predict time).")] = None,
    condition: Annotated[Optional[str], typer.Option(help="Train under a fixed condition instead: a, t, v, at, av, tv or atv.")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs over all stages (ComP splits them 50/50).")] = default(TrainConfig, "epochs"),
    lr: Annotated[Optional[float], typer.Option(help="Learning rate; default: the method's (see 'imer methods'), else 1e-3.")] = default(TrainConfig, "lr"),
    ema_half_life: Annotated[float, typer.Option(help="Select and keep an exponential moving average of the weights with this half-life in epochs (0 = off): smoother selection on noisy validation.")] = default(TrainConfig, "ema_half_life"),
    schedule: Annotated[str, typer.Option(help="Learning-rate schedule per stage: constant or cosine.")] = default(TrainConfig, "schedule"),
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model for training (CUDA: fewer kernel launches; the first epoch compiles).")] = False,
    weight_decay: Annotated[float, typer.Option(help="Adam L2 penalty.")] = default(TrainConfig, "weight_decay"),
    batch_size: Annotated[Optional[int], typer.Option(help="Dialogues (or utterances) per batch; default 32 / 256.")] = default(TrainConfig, "batch_size"),
    batch_mode: Annotated[Optional[BatchMode], typer.Option(help="Batch whole dialogues or single utterances; default: the method's.")] = None,
    patience: Annotated[int, typer.Option(help="Stop a stage after this many epochs without improvement (0 = never).")] = default(TrainConfig, "patience") or 0,
    val_by: Annotated[str, typer.Option(help="When the data has no valid split, hold out whole 'speakers' or 'dialogues' for selection; 'auto': speakers when each dialogue has one speaker (speaker-independent selection).")] = default(TrainConfig, "val_by"),
    selection: Annotated[Selection, typer.Option(help="Select the best epoch on 'valid' (held-out training dialogues when the data has no valid split) or on 'test' (the official ComP protocol; optimistic).")] = Selection(default(TrainConfig, "selection")),
    seed: Annotated[int, typer.Option(help="Seed for weights, batches and masks.")] = default(TrainConfig, "seed"),
    device: DeviceOpt = default(TrainConfig, "device"),
    set_: Annotated[list[str], typer.Option("--set", help="Method option KEY=VALUE, repeatable, e.g. --set momentum=0.5 --set use_gm=false.")] = [],
    config: Annotated[Optional[Path], typer.Option(help="JSON file with method options (overridden by --set).")] = None,
    evaluate_after: Annotated[bool, typer.Option("--evaluate/--no-evaluate", help="Print the missing-rate table on the test split when done.")] = True,
    mask_seeds: Annotated[int, typer.Option(help="Evaluation mask seeds per missing rate.")] = 3,
    cv: Annotated[Optional[CV], typer.Option(help="'sessions': IEMOCAP 5-fold leave-one-session-out (the community protocol); one bundle per fold in MODEL/sessionK, table averaged over folds.")] = None,
    threads: ThreadsOpt = None,
    out: OutAlias = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a fusion method on a feature store and save a model bundle."""
    from imer.cli.progress import ProgressDisplay
    from imer.config import from_dict, merge, parse_set, read_options_file
    from imer.fusion.experiment import run_cv, run_experiment
    from imer.store.format import load_store

    where = _model_dir(model, out, Path("runs/model"))
    if missing_rate is not None and condition is not None:
        raise BadInput("give --missing-rate or --condition, not both")
    if mask_seeds < 1:
        raise BadInput("--mask-seeds must be at least 1")
    options = merge(read_options_file(config), parse_set(set_, scope=method))
    cfg = from_dict(TrainConfig, {
        "epochs": epochs, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
        "batch_mode": batch_mode.value if batch_mode else None, "patience": patience or None,
        "seed": seed, "device": device, "missing_rate": missing_rate,
        "condition": condition, "selection": selection.value, "schedule": schedule, "compile": compile_, "val_by": val_by,
        "ema_half_life": ema_half_life,
    })
    cfg.validate()
    _set_threads(threads)
    fs = load_store(data)
    seeds = tuple(range(mask_seeds))
    meta = {"data": str(data)}
    with ProgressDisplay(quiet=as_json) as prog:
        if cv is None:
            res = run_experiment(fs, method, cfg, options, out=where, evaluate=evaluate_after, mask_seeds=seeds, progress=prog, meta=meta)
            summary = {**res.summary(), "model": str(where)}
            rows = res.rows
        else:
            def on_fold(name: str, n_test: int) -> None:
                prog.note(f"[bold]fold {name}[/bold]: test on {n_test} utterances")

            cvr = run_cv(fs, method, cfg, cv.value, options, out=where, mask_seeds=seeds, progress=prog, on_fold=on_fold, meta=meta)
            summary = {"method": method, "cv": cv.value, "model": str(where),
                       "folds": [{**r.summary(), "model": str(where / n), "fold": n} for n, r in cvr.folds]}
            rows = cvr.rows
    warnings = summary.get("warnings", []) if cv is None else [w for f in summary["folds"] for w in f.get("warnings", [])]
    if warnings and not as_json:
        from imer.cli.render import err_console

        for w in warnings:
            err_console.print(f"[yellow]warning:[/yellow] {w}")
    if rows:
        summary["test"] = rows
        if not as_json:
            sel = summary["selection_split"] if cv is None else summary["folds"][0]["selection_split"]
            what = "test split" if cv is None else f"mean over {len(summary['folds'])} leave-one-session-out folds"
            _print_table(rows, fs.task, f"{method} on {data.name} ({what}; selected on {sel})")
    _report(summary, as_json, skip=("test", "best", "folds", "warnings"))


@app.command()
def extract(
    path: Annotated[Optional[Path], typer.Argument(help="A media file or a folder (searched recursively). Optional with --manifest.")] = None,
    manifest: Annotated[Optional[Path], typer.Option(help="CSV or JSON manifest with columns id, path and optionally start, end, transcript, label, speaker, dialogue, split.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the feature store (what 'imer train --data' reads).")] = Path("feats"),
    audio: Annotated[str, typer.Option(help=_backend_help(Modality.AUDIO))] = OFFLINE_DEFAULTS[Modality.AUDIO],
    text: Annotated[str, typer.Option(help=_backend_help(Modality.TEXT))] = OFFLINE_DEFAULTS[Modality.TEXT],
    video: Annotated[str, typer.Option(help=_backend_help(Modality.VIDEO))] = OFFLINE_DEFAULTS[Modality.VIDEO],
    set_: Annotated[list[str], typer.Option("--set", help="Backend option BACKEND.KEY=VALUE, e.g. --set wav2vec2.model=/models/w2v --set manet.checkpoint=manet.pth.")] = [],
    device: DeviceOpt = default(ExtractConfig, "device"),
    batch_size: Annotated[int, typer.Option(help="Utterances per extractor batch (across files).")] = default(ExtractConfig, "batch_size"),
    fps: Annotated[float, typer.Option(help="Video frames sampled per second for face detection.")] = default(DecodeConfig, "fps"),
    max_frames: Annotated[int, typer.Option(help="At most this many frames per utterance.")] = default(DecodeConfig, "max_frames"),
    force: Annotated[bool, typer.Option("--force", help="Re-extract even when cached.")] = False,
    cache: Annotated[Optional[Path], typer.Option(help="Cache folder (default OUT/.cache); share it between runs and machines.")] = None,
    holdout: Annotated[float, typer.Option(help="When the data names no split: share of speakers (or files) put in 'test'.")] = default(CompileConfig, "holdout"),
    no_cues: Annotated[bool, typer.Option("--no-cues", help="Do not split files into utterances at subtitle cues.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first manifest row with an invalid segment (end not after start, a negative or malformed time). Default: record its audio and video as missing (invalid_segment), go on, and list such rows in the summary.")] = False,
    decode_workers: Annotated[int, typer.Option(help="Threads decoding media ahead of the extractors.")] = default(ExtractConfig, "decode_workers"),
    task: Annotated[Task, typer.Option(help="How to read labels: auto (fractional numbers = regression), classification, regression.")] = Task(default(CompileConfig, "task")),
    labels: Annotated[Optional[str], typer.Option("--labels", help="The classes, in order: NAME,NAME,... or @FILE (one per line). Any other label is then an error naming its rows; unlabelled rows stay allowed. Default: the labels found, with those that look wrong (typos, case variants, numbers among names) reported as warnings.")] = None,
    label_map: Annotated[Optional[str], typer.Option("--label-map", help="Rename labels first: OLD=NEW,OLD=NEW or @FILE, e.g. 'Happy=happy,hapy=happy'; OLD= makes those rows unlabelled.")] = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Raw video / audio / transcripts -> cached per-utterance features -> a feature store."""
    from imer.cli.progress import ProgressDisplay
    from imer.config import from_dict, parse_set
    from imer.extractors.base import EXTRACTORS
    from imer.workflows import extract_store, find_utterances

    backends = {m: _check_backend(m, n) for m, n in ((Modality.AUDIO, audio), (Modality.TEXT, text), (Modality.VIDEO, video))}
    options = parse_set(set_, scopes=EXTRACTORS.names(), label="BACKEND")
    cfg = ExtractConfig(
        backends=backends,
        options=options,
        decode=from_dict(DecodeConfig, {"fps": fps, "max_frames": max_frames}, "decode settings"),
        device=device,
        batch_size=batch_size,
        decode_workers=decode_workers,
        force=force,
        cache_dir=cache,
    )
    from imer.store.labels import parse_label_list, parse_label_map

    compile_cfg = from_dict(CompileConfig, {
        "holdout": holdout, "task": task.value,
        **({"labels": parse_label_list(labels)} if labels is not None else {}),
        **({"label_map": parse_label_map(label_map)} if label_map is not None else {}),
    }, "store")
    from imer.extractors.run import build_extractors

    build_extractors(cfg)  # bad options fail here, before any media is read
    found: list[str] = []  # warnings from reading the input (cues skipped, symlinks leading nowhere)
    utts = find_utterances(path, manifest, cues=not no_cues, strict=strict, warnings=found)
    _set_threads(threads)
    with ProgressDisplay(quiet=as_json) as prog:
        _, summary = extract_store(utts, out, cfg, compile_cfg, progress=prog, warnings=found)
    if as_json:
        from imer.cli.render import print_json

        print_json(summary.to_dict())
        return
    from imer.cli.render import extract_table, out_console, print_extract_warnings

    out_console.print(extract_table(summary))
    print_extract_warnings(summary)


@app.command()
def predict(
    paths: Annotated[Optional[list[Path]], typer.Argument(help="Media files or folders (one prediction per media file).")] = None,
    model: ModelOpt = Path("runs/model"),
    no_audio: Annotated[bool, typer.Option("--no-audio", help="Do not use the audio stream.")] = False,
    no_text: Annotated[bool, typer.Option("--no-text", help="Do not use the transcript.")] = False,
    no_video: Annotated[bool, typer.Option("--no-video", help="Do not use the video (faces).")] = False,
    text: Annotated[Optional[str], typer.Option(help="Transcript to use for every input (or alone, with no media).")] = None,
    transcript: Annotated[Optional[Path], typer.Option(help="Transcript file (.txt/.srt/.vtt/.json) to use for every input.")] = None,
    start: Annotated[Optional[float], typer.Option(help="Segment start in seconds.")] = None,
    end: Annotated[Optional[float], typer.Option(help="Segment end in seconds.")] = None,
    device: DeviceOpt = "auto",
    cache: Annotated[Optional[Path], typer.Option(help="Feature cache folder to reuse between calls.")] = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Emotion label and class probabilities for each clip; says which streams were used and why not the others.

    A clip with no usable stream gets no label: the output says so instead of guessing.
    """
    from imer.cli.progress import ProgressDisplay
    from imer.predict import Predictor

    disable = {m for m, off in (("audio", no_audio), ("text", no_text), ("video", no_video)) if off}
    _set_threads(threads)
    predictor = Predictor(model, device=device, cache_dir=cache, disable=disable)
    warnings: list[str] = []
    with ProgressDisplay(quiet=as_json) as prog:
        results = predictor.predict(paths or [], disable=disable, text=text, transcript=transcript, start=start, end=end,
                                    progress=prog, warnings=warnings)
    if as_json:
        from imer.cli.render import clean_nans, print_json

        print_json(clean_nans({"model": str(model), "predictions": [r.to_dict() for r in results], "warnings": warnings}))
        return
    from imer.cli.render import out_console, predictions_table, print_extract_warnings

    out_console.print(predictions_table(results))
    print_extract_warnings({"warnings": warnings})


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option(help="imer feature store to evaluate on.")],
    model: Annotated[Optional[Path], typer.Option("--model", help="Model bundle folder (written by 'imer train').")] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate ('test', 'valid', 'train' or 'all').")] = "test",
    mask_seeds: Annotated[int, typer.Option(help="Evaluation mask seeds per missing rate (mean ± std).")] = 3,
    device: DeviceOpt = "auto",
    checkpoint: CheckpointAlias = None,
    as_json: JsonOpt = False,
) -> None:
    """Print WA/UA (or Acc/F1/MAE) per missing rate 0.0-0.7 and per fixed condition."""
    from imer.cli.progress import ProgressDisplay
    from imer.fusion.evaluation import evaluate_bundle

    where = _model_dir(model, checkpoint)
    with ProgressDisplay(quiet=as_json) as prog:
        res = evaluate_bundle(where, data, split, mask_seeds, device, progress=prog)
    task = res.pop("task")
    if as_json:
        from imer.cli.render import clean_nans, print_json

        print_json(clean_nans(res))
    else:
        _print_table(res["rows"], task, f"{res['method']} on {data.name} ({split} split)")


# ---------------------------------------------------------------------- helpers
def _print_table(rows, task, title) -> None:
    from imer.cli.render import out_console, results_table
    from imer.fusion.metrics import headline_metrics

    out_console.print(results_table(rows, headline_metrics(task), title))


def _report(summary: dict, as_json: bool, skip: tuple[str, ...] = ()) -> None:
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
