"""The CLI end to end on a small learnable store: methods, train, evaluate, import-community."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from imer.cli.app import app
from imer.errors import BadInput, IncompatibleBundle, UnknownName
from imer.fusion.data import save_store
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


def test_methods_json_lists_registered_methods():
    rows = _json(runner.invoke(app, ["methods", "--json"]))
    names = {r["name"] for r in rows}
    assert {"comp", "concat"} <= names
    comp = next(r for r in rows if r["name"] == "comp")
    assert comp["stages"] == ["unimodal", "fusion"] and comp["description"]


@pytest.mark.parametrize("method", ["concat", "comp"])
def test_train_then_evaluate(store, tmp_path, method):
    out = tmp_path / "model"
    args = ["train", "--data", str(store), "--method", method, "--out", str(out), "--epochs", "4",
            "--missing-rate", "0.3", "--lr", "0.003", "--mask-seeds", "1", "--set", "hidden=16", "--json"]
    summary = _json(runner.invoke(app, args))
    assert summary["method"] == method and summary["epochs_run"] == 4
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    protocols = [r["protocol"] for r in summary["test"]]
    assert protocols[:8] == [f"mr{r:.1f}" for r in np.arange(0, 0.8, 0.1)] and "cond-atv" in protocols
    res = _json(runner.invoke(app, ["evaluate", "--checkpoint", str(out), "--data", str(store), "--json", "--mask-seeds", "2"]))
    assert len(res["rows"]) == 15
    for row in res["rows"]:
        assert 0.0 <= row["WA"] <= 1.0 and 0.0 <= row["UA"] <= 1.0
    mr7 = next(r for r in res["rows"] if r["protocol"] == "mr0.7")
    assert mr7["achieved_missing_rate"] == pytest.approx(2 / 3, abs=1e-9)
    bundle = json.loads((out / "config.json").read_text())
    assert bundle["method"] == method and bundle["extractors"]["audio"]["name"] == "synthetic"


def test_train_with_condition_and_overrides(store, tmp_path):
    out = tmp_path / "m"
    summary = _json(runner.invoke(app, ["train", "--data", str(store), "--method", "comp", "--out", str(out),
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
    _json(runner.invoke(app, ["train", "--data", str(store), "--method", "concat", "--out", str(out), "--epochs", "1", "--no-evaluate", "--json"]))
    other = make_featureset(n_dialogues=8, seed=3)  # same extractors as the store but text
    other.extractors["text"] = {"name": "minilm", "config": {}}
    save_store(other, tmp_path / "other")
    r = runner.invoke(app, ["evaluate", "--checkpoint", str(out), "--data", str(tmp_path / "other")])
    assert isinstance(r.exception, IncompatibleBundle) and "minilm" in str(r.exception)


def test_import_community_real_labels(shared_data, tmp_path):
    from imer.fusion.community import read_labels

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
    s = _json(runner.invoke(app, ["train", "--data", str(tmp_path / "store"), "--method", "concat", "--out", str(out),
                                  "--epochs", "2", "--cv", "sessions", "--mask-seeds", "1", "--json"]))
    assert [f["fold"] for f in s["folds"]] == [f"session{k}" for k in range(1, 6)]
    assert all((out / f"session{k}" / "model.safetensors").is_file() for k in range(1, 6))
    assert len(s["test"]) == 15 and s["test"][0]["folds"] == 5
