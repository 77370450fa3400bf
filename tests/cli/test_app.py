"""The CLI end to end on a small learnable store: methods, extractors, train, evaluate, predict's
--model, import-community, the device option and the old option spellings."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from imer.cli.app import app
from imer.errors import BadInput, IncompatibleBundle, UnknownName
from imer.store import FeatureSpec, save_store
from synthetic import make_featureset

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    save_store(make_featureset(n_dialogues=24, noise=1.0, seed=3), out)
    return out


def _json(result) -> dict | list:
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads(result.stdout)


def _flat(text: str) -> str:
    """Help and usage errors come in rich boxes that wrap lines: one line of words."""
    for ch in "│╭╮╰╯─":
        text = text.replace(ch, " ")
    return " ".join(text.split())


def test_methods_json_lists_registered_methods():
    from imer.fusion.base import METHODS

    rows = _json(runner.invoke(app, ["methods", "--json"]))
    names = [r["name"] for r in rows]
    assert names == list(METHODS.names())
    assert {"comp", "concat"} <= set(names)
    comp = next(r for r in rows if r["name"] == "comp")
    assert comp["stages"] == ["unimodal", "fusion"] and comp["description"]
    # The learning rate a run gets without --lr: declared by the method, else the trainer's.
    assert comp["optimizer"] == {"name": "adam", "lr": 3e-4} and comp["batch_mode"] == "dialogue"
    concat = next(r for r in rows if r["name"] == "concat")
    assert concat["optimizer"] == {"name": "adam", "lr": 1e-3}


def test_extractors_json_lists_registered_extractors():
    from imer.extractors.base import EXTRACTORS
    from imer.extractors.run import OFFLINE_DEFAULTS

    rows = _json(runner.invoke(app, ["extractors", "--json"]))
    assert [r["name"] for r in rows] == list(EXTRACTORS.names())
    assert {"egemaps", "minilm", "faceprint"} <= {r["name"] for r in rows}
    for r in rows:
        assert set(r) == {"name", "modality", "kind", "offline", "default", "dim", "description", "options"}, r
        cls = EXTRACTORS.get(r["name"])
        assert r["modality"] == cls.modality.value and r["kind"] == cls.kind and r["offline"] is bool(cls.offline)
        assert r["default"] is (OFFLINE_DEFAULTS.get(cls.modality) == r["name"])
        assert r["description"] and isinstance(r["options"], dict)
    by_name = {r["name"]: r for r in rows}
    assert by_name["egemaps"]["dim"] == 88 and by_name["minilm"]["dim"] == 384
    assert {n for n, r in by_name.items() if r["default"]} == set(OFFLINE_DEFAULTS.values())


@pytest.mark.parametrize("method", ["concat", "comp", "momke"])
def test_train_then_evaluate(store, tmp_path, method):
    out = tmp_path / "model"
    args = ["train", "--data", str(store), "--method", method, "--model", str(out), "--epochs", "4",
            "--missing-rate", "0.3", "--lr", "0.003", "--mask-seeds", "1", "--set", "hidden=16", "--json"]
    summary = _json(runner.invoke(app, args))
    assert summary["method"] == method and summary["epochs_run"] == 4
    assert summary["model"] == str(out)
    assert summary["selection_metric"] == "WA" and summary["selection_split"] == "valid"
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    protocols = [r["protocol"] for r in summary["test"]]
    assert protocols[:8] == [f"mr{r:.1f}" for r in np.arange(0, 0.8, 0.1)] and "cond-atv" in protocols
    res = _json(runner.invoke(app, ["evaluate", "--model", str(out), "--data", str(store), "--json", "--mask-seeds", "2"]))
    assert set(res) == {"model", "data", "split", "method", "rows"}
    assert res["model"] == str(out) and res["data"] == str(store) and res["split"] == "test" and res["method"] == method
    assert len(res["rows"]) == 15
    for row in res["rows"]:
        assert 0.0 <= row["WA"] <= 1.0 and 0.0 <= row["UA"] <= 1.0
    mr7 = next(r for r in res["rows"] if r["protocol"] == "mr0.7")
    assert mr7["achieved_missing_rate"] == pytest.approx(2 / 3, abs=1e-9)
    if method == "momke":  # the expert load per condition (the paper's Fig. 3)
        load = next(r for r in res["rows"] if r["protocol"] == "cond-at")["summary"]["expert_load"]
        assert set(load) == {"audio", "text"} and sum(load["text"].values()) == pytest.approx(1.0, abs=1e-3)
        shown = runner.invoke(app, ["evaluate", "--model", str(out), "--data", str(store), "--mask-seeds", "1"])
        assert shown.exit_code == 0 and "expert load" in _flat(shown.output)
    else:
        assert all("summary" not in r for r in res["rows"])
    bundle = json.loads((out / "config.json").read_text())
    assert bundle["version"] == 2
    assert bundle["method"] == method and bundle["features"]["audio"]["name"] == "synthetic"


def test_train_json_summary_names_the_selection_metric(store, tmp_path):
    out = tmp_path / "m"
    summary = _json(runner.invoke(app, ["train", "--data", str(store), "--method", "concat", "--model", str(out),
                                        "--epochs", "1", "--no-evaluate", "--json"]))
    assert summary["selection_metric"] == "WA"
    assert summary["model"] == str(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train_result"]["metric"] == "WA"


def test_old_spellings_train_out_and_evaluate_checkpoint_still_work(store, tmp_path):
    out = tmp_path / "model"
    summary = _json(runner.invoke(app, ["train", "--data", str(store), "--method", "concat", "--out", str(out),
                                        "--epochs", "1", "--no-evaluate", "--json"]))
    assert summary["model"] == str(out) and (out / "config.json").is_file()
    old = _json(runner.invoke(app, ["evaluate", "--checkpoint", str(out), "--data", str(store), "--json", "--mask-seeds", "1"]))
    new = _json(runner.invoke(app, ["evaluate", "--model", str(out), "--data", str(store), "--json", "--mask-seeds", "1"]))
    assert old["model"] == new["model"] == str(out)
    assert old["rows"] == new["rows"]
    # the same folder under both spellings is fine; two different folders are an error
    _json(runner.invoke(app, ["evaluate", "--model", str(out), "--checkpoint", str(out), "--data", str(store), "--json", "--mask-seeds", "1"]))
    r = runner.invoke(app, ["evaluate", "--model", str(out), "--checkpoint", str(tmp_path / "other"), "--data", str(store)])
    assert isinstance(r.exception, BadInput) and "--model" in str(r.exception)
    r = runner.invoke(app, ["train", "--data", str(store), "--model", str(out), "--out", str(tmp_path / "other"), "--epochs", "1"])
    assert isinstance(r.exception, BadInput) and "--model" in str(r.exception)
    assert not (tmp_path / "other").exists()


def test_old_spellings_are_hidden_from_help():
    ev = runner.invoke(app, ["evaluate", "--help"])
    assert ev.exit_code == 0, ev.output
    assert "--checkpoint" not in ev.output and "--model" in ev.output
    tr = runner.invoke(app, ["train", "--help"])
    assert tr.exit_code == 0, tr.output
    assert "--model" in tr.output and re.search(r"--out\b", tr.output) is None
    pr = runner.invoke(app, ["predict", "--help"])
    assert pr.exit_code == 0, pr.output
    assert "--model" in pr.output and "--checkpoint" not in pr.output


def test_predict_takes_model(store, tmp_path):
    """--model names the bundle in predict too (a synthetic bundle cannot predict from media: it says which)."""
    out = tmp_path / "model"
    _json(runner.invoke(app, ["train", "--data", str(store), "--method", "concat", "--model", str(out), "--epochs", "1", "--no-evaluate", "--json"]))
    r = runner.invoke(app, ["predict", "--text", "hello", "--model", str(out), "--device", "cpu", "--json"])
    assert isinstance(r.exception, IncompatibleBundle), r.output + repr(r.exception)
    assert str(out) in str(r.exception) and "synthetic" in str(r.exception)
    r = runner.invoke(app, ["predict", "--text", "hello", "--model", str(tmp_path / "nope"), "--device", "cpu"])
    assert isinstance(r.exception, BadInput) and "not a model bundle" in str(r.exception)


@pytest.mark.parametrize("command", [["train", "--data", "x"], ["evaluate", "--data", "x", "--model", "m"],
                                     ["predict", "--text", "hi"], ["extract", "x"]])
def test_bad_device_is_a_usage_error(command):
    r = runner.invoke(app, [*command, "--device", "cuda:x"])
    assert r.exit_code == 2, r.output + repr(r.exception)
    flat = _flat(r.output)
    assert "--device" in flat
    for choice in ("auto", "cpu", "cuda", "cuda:N", "mps"):
        assert choice in flat, (choice, flat)


def test_good_device_names_pass_the_check(store, tmp_path):
    out = tmp_path / "model"
    _json(runner.invoke(app, ["train", "--data", str(store), "--method", "concat", "--model", str(out), "--epochs", "1",
                              "--no-evaluate", "--device", "CPU", "--json"]))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train_config"]["device"] == "cpu"


def test_train_with_condition_and_overrides(store, tmp_path):
    out = tmp_path / "m"
    summary = _json(runner.invoke(app, ["train", "--data", str(store), "--method", "comp", "--model", str(out),
                                        "--epochs", "2", "--condition", "at", "--set", "hidden=16", "--set", "use_gm=false",
                                        "--no-evaluate", "--json"]))
    assert "test" not in summary
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method_config"]["use_gm"] is False and cfg["method_config"]["hidden"] == 16
    assert cfg["train_config"]["condition"] == "at"


def test_clear_errors(store, tmp_path):
    r = runner.invoke(app, ["train", "--data", str(tmp_path), "--epochs", "1"])
    assert isinstance(r.exception, BadInput) and "store.json" in str(r.exception)
    r = runner.invoke(app, ["train", "--data", str(store), "--method", "compp", "--epochs", "1"])
    assert isinstance(r.exception, UnknownName) and "comp" in str(r.exception)
    r = runner.invoke(app, ["train", "--data", str(store), "--set", "momentun=0.3", "--epochs", "1"])
    assert isinstance(r.exception, BadInput) and "momentum" in str(r.exception)
    r = runner.invoke(app, ["train", "--data", str(store), "--missing-rate", "0.3", "--condition", "a"])
    assert isinstance(r.exception, BadInput)


def test_evaluate_refuses_other_features(store, tmp_path):
    out = tmp_path / "model"
    _json(runner.invoke(app, ["train", "--data", str(store), "--method", "concat", "--model", str(out), "--epochs", "1", "--no-evaluate", "--json"]))
    other = make_featureset(n_dialogues=8, seed=3)  # same extractors as the store but text
    other.specs["text"] = FeatureSpec(name="minilm", dim=other.dims["text"], config={})
    save_store(other, tmp_path / "other")
    r = runner.invoke(app, ["evaluate", "--model", str(out), "--data", str(tmp_path / "other")])
    assert isinstance(r.exception, IncompatibleBundle) and "minilm" in str(r.exception)


def test_import_community_real_labels(shared_data, tmp_path):
    from imer.store.community import read_labels

    labels = shared_data / "gcnet-label-pkl" / "IEMOCAP_features_raw_4way.pkl"
    uids = read_labels(labels).utterance_ids()
    text = tmp_path / "text"
    text.mkdir()
    rng = np.random.default_rng(0)
    for u in uids[:: 2]:  # every other utterance has a text feature
        np.save(text / f"{u}.npy", rng.normal(size=(3, 4)).astype(np.float32))
    out = tmp_path / "store"
    s = _json(runner.invoke(app, ["import-community", "--labels", str(labels), "--text", str(text), "--out", str(out), "--json"]))
    assert s["utterances"] == 5531 and s["present"] == {"audio": 0, "text": len(uids[::2]), "video": 0}
    assert s["dims"]["text"] == 4 and s["task"]["label_names"] == ["happy", "sad", "neutral", "angry"]


def test_leave_one_session_out(tmp_path):
    fs = make_featureset(n_dialogues=10, noise=1.0, seed=5)
    fs.dialogues = [f"Ses0{int(d[1:]) % 5 + 1}F_impro{d}" for d in fs.dialogues]  # IEMOCAP-style ids
    save_store(fs, tmp_path / "store")
    out = tmp_path / "cv"
    s = _json(runner.invoke(app, ["train", "--data", str(tmp_path / "store"), "--method", "concat", "--model", str(out),
                                  "--epochs", "2", "--cv", "sessions", "--mask-seeds", "1", "--json"]))
    assert s["model"] == str(out)
    assert [f["fold"] for f in s["folds"]] == [f"session{k}" for k in range(1, 6)]
    assert [f["model"] for f in s["folds"]] == [str(out / f"session{k}") for k in range(1, 6)]
    assert all(f["selection_metric"] == "WA" for f in s["folds"])
    assert all((out / f"session{k}" / "model.safetensors").is_file() for k in range(1, 6))
    assert len(s["test"]) == 15 and s["test"][0]["folds"] == 5
