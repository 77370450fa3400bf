"""Tables and JSON for the CLI. The library never prints; this module does."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# Human-facing output goes to stderr whenever stdout carries JSON.
out_console = Console()
err_console = Console(stderr=True)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=_default, allow_nan=False) + "\n")


def _default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def clean_nans(obj: Any) -> Any:
    """NaN is not JSON: turn it into null."""
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: clean_nans(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clean_nans(v) for v in obj]
    return obj


def results_table(rows: list[dict], metrics: tuple[str, ...], title: str) -> Table:
    t = Table(title=title)
    t.add_column("protocol")
    t.add_column("MR (achieved)", justify="right")
    for k in metrics:
        t.add_column(k, justify="right")
    percent = {"WA", "UA", "F1", "Acc2", "Acc7", "Acc2_has0", "F1_has0"}
    loads = any(r.get("summary", {}).get("expert_load") for r in rows)
    if loads:  # MoMKE: mean router weight of the audio/text/video experts, per input modality
        t.add_column("expert load: input -> a/t/v experts")
    for r in rows:
        name = f"MR {r['missing_rate']:.1f}" if r["condition"] is None else f"{{{','.join(r['condition'])}}}"
        cells = []
        for k in metrics:
            v, s = r[k], r.get(f"{k}_std", 0.0)
            if k in percent:
                cells.append(f"{100 * v:.2f}" + (f" ± {100 * s:.2f}" if s else ""))
            else:
                cells.append(f"{v:.3f}" + (f" ± {s:.3f}" if s else ""))
        if loads:
            load = r.get("summary", {}).get("expert_load", {})
            cells.append("  ".join(f"{m[0]}->" + "/".join(f"{w:.2f}" for w in load[m].values()) for m in load))
        t.add_row(name, f"{r['achieved_missing_rate']:.3f}", *cells)
    return t


def extract_table(summary) -> Table:
    """End-of-run summary of ``imer extract``: per modality present / missing by reason."""
    s = summary.to_dict() if hasattr(summary, "to_dict") else summary
    t = Table(title=f"{s['utterances']} utterances from {s['files']} files in {s['seconds']:.1f} s -> {s['out']}")
    t.add_column("modality")
    t.add_column("extractor")
    t.add_column("present", justify="right")
    t.add_column("missing (reason: count)")
    t.add_column("cache hits", justify="right")
    t.add_column("extracted", justify="right")
    for m in ("audio", "text", "video"):
        ex = s["extractors"].get(m, {})
        missing = ", ".join(f"{k}: {v}" for k, v in sorted(s["missing"].get(m, {}).items())) or "-"
        t.add_row(m, ex.get("name", "none"), str(s["present"].get(m, 0)), missing,
                  str(s["cache_hits"].get(m, 0)), str(s["extracted"].get(m, 0)))
    t.caption = "splits: " + ", ".join(f"{k or '(none)'}={v}" for k, v in sorted(s["splits"].items())) + \
        "   stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in s["stage_seconds"].items())
    if s.get("reused"):  # identical segments or transcripts, computed once in this run
        t.caption += "   reused in this run: " + ", ".join(f"{k} {v}" for k, v in sorted(s["reused"].items()))
    return t


def extract_warnings(summary) -> list[str]:
    """``imer extract``'s warnings (e.g. labels that look wrong), then its notes, one markup line each."""
    from rich.markup import escape

    s = summary.to_dict() if hasattr(summary, "to_dict") else summary
    lines = [f"[yellow]warning:[/yellow] {escape(w)}" for w in s.get("warnings", [])]
    lines += [f"[cyan]note:[/cyan] {escape(i['message'])}" for i in s.get("label_issues", []) if i.get("severity") == "note"]
    return lines


def print_extract_warnings(summary, console: Console | None = None) -> None:
    for line in extract_warnings(summary):
        (console or out_console).print(line)


def predictions_table(results) -> Table:
    t = Table(title="predictions")
    t.add_column("input")
    t.add_column("label")
    t.add_column("probabilities")
    for m in ("audio", "text", "video"):
        t.add_column(m)
    for r in results:
        where = Path(r.source).name if r.source else r.id
        if r.start is not None or r.end is not None:
            where += f" [{r.start or 0:.2f}-{r.end if r.end is not None else 'end'}]"
        probs = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r.probabilities.items(), key=lambda kv: -kv[1])[:4])
        if r.abstained:
            label = f"[red]none[/red] ({r.abstained})"
        else:
            label = f"[bold]{r.label if r.label is not None else f'{r.value:+.3f}'}[/bold]"
        cells = ["used" if s.present else f"[dim]{s.reason.value}[/dim]" for s in (r.streams[m] for m in ("audio", "text", "video"))]
        t.add_row(where, label, probs or "-", *cells)
    return t


def extractors_table(rows: list[dict]) -> Table:
    """``imer extractors``: one row per registered backend."""
    t = Table(title="feature extractors")
    for c in ("name", "modality", "dim", "offline", "description"):
        t.add_column(c)
    for r in sorted(rows, key=lambda r: (("audio", "text", "video").index(r["modality"]), r["name"])):
        name = r["name"] + (" (default)" if r.get("default") else "")
        t.add_row(name, r["modality"], "?" if r["dim"] is None else str(r["dim"]), "yes" if r["offline"] else "no", r["description"])
    return t
