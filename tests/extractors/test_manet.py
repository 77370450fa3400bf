"""MA-Net: the network (key layout, cascade order), checkpoint reading and the ``manet`` backend.

Every checkpoint is a random-initialised one written to a temp dir; the end-to-end test runs MTCNN
on CPU on two real RAVDESS frames from ``../shared/data``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from imer.errors import BadInput
from imer.extractors.base import build_extractor
from imer.types import MissingReason, StreamStatus

CLIP = "av-clips/ravdess-actor01/Actor_01/01-01-08-02-02-02-01.mp4"  # surprised, strong intensity


@pytest.fixture(scope="module")
def real_frames(shared_data) -> list[np.ndarray]:
    """Two 1280x720 RGB frames, ~1 s apart, of a RAVDESS actor facing the camera."""
    av = pytest.importorskip("av")
    path = shared_data / CLIP
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for i, f in zip(range(46), container.decode(video=0)) if i in (15, 45)]
    assert len(frames) == 2 and frames[0].shape == (720, 1280, 3)
    return frames


def _black(h: int = 480, w: int = 640) -> np.ndarray:
    return np.zeros((h, w, 3), np.uint8)


# -- MA-Net: the network -----------------------------------------------------------------------------
def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()
    }


def _block(prefix: str, kind: str, cin: int, cout: int, stride: int) -> dict[str, tuple[int, ...]]:
    """Keys of one block as written in the official model/manet.py + attention.py."""
    keys = {f"{prefix}.conv1.weight": (cout, cin, 3, 3), **_bn(f"{prefix}.bn1", cout)}
    if kind in ("basic", "attention"):
        keys |= {f"{prefix}.conv2.weight": (cout, cout, 3, 3), **_bn(f"{prefix}.bn2", cout)}
    if kind == "attention":  # CBAM(planes, 16)
        cbam = f"{prefix}.cbam"
        keys |= {
            f"{cbam}.ChannelGate.mlp.1.weight": (cout // 16, cout),
            f"{cbam}.ChannelGate.mlp.1.bias": (cout // 16,),
            f"{cbam}.ChannelGate.mlp.3.weight": (cout, cout // 16),
            f"{cbam}.ChannelGate.mlp.3.bias": (cout,),
            f"{cbam}.SpatialGate.spatial.conv.weight": (1, 2, 7, 7),
            **_bn(f"{cbam}.SpatialGate.spatial.bn", 1),
        }
    if kind == "mulscale":  # 2 cascades x 4 groups of cout/4 channels
        w = cout // 4
        for c in (1, 2):
            for g in (1, 2, 3, 4):
                keys |= {f"{prefix}.conv{c}_2_{g}.weight": (w, w, 3, 3), **_bn(f"{prefix}.bn{c}_2_{g}", w)}
    if stride != 1 or cin != cout:
        keys |= {f"{prefix}.downsample.0.weight": (cout, cin, 1, 1), **_bn(f"{prefix}.downsample.1", cout)}
    return keys


# (stage, block kind, in channels, out channels, stride of its first block); 2 blocks per stage.
MANET_STAGES = [
    ("layer1", "basic", 64, 64, 1),
    ("layer2", "basic", 64, 128, 2),
    *[(f"layer3_1_p{p}", "attention", 128, 256, 2) for p in (1, 2, 3, 4)],
    *[(f"layer4_1_p{p}", "attention", 256, 512, 1) for p in (1, 2, 3, 4)],
    ("layer3_2", "mulscale", 128, 256, 2),
    ("layer4_2", "mulscale", 256, 512, 2),
]


def official_manet_keys(num_classes: int = 7) -> dict[str, tuple[int, ...]]:
    keys = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    for stage, kind, cin, cout, stride in MANET_STAGES:
        keys |= _block(f"{stage}.0", kind, cin, cout, stride)
        keys |= _block(f"{stage}.1", kind, cout, cout, 1)
    for fc in ("fc_1", "fc_2"):
        keys |= {f"{fc}.weight": (num_classes, 512), f"{fc}.bias": (num_classes,)}
    return keys


@pytest.fixture(scope="module")
def manet_model():
    from imer.extractors.backends.manet.network import MANet

    torch.manual_seed(0)
    model = MANet().eval()
    with torch.no_grad():  # non-trivial BN statistics, so a load that skipped them would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def manet_state(manet_model) -> dict:
    return {k: v.clone() for k, v in manet_model.state_dict().items()}


def test_manet_key_layout_matches_the_official_table(manet_state):
    from imer.extractors.backends.manet.network import expected_state_dict_keys

    table = official_manet_keys()
    assert len(table) == 692
    assert expected_state_dict_keys() == table
    assert {k: tuple(v.shape) for k, v in manet_state.items()} == table
    assert list(expected_state_dict_keys(12666).items())[-4:] == [
        ("fc_1.weight", (12666, 512)),
        ("fc_1.bias", (12666,)),
        ("fc_2.weight", (12666, 512)),
        ("fc_2.bias", (12666,)),
    ]
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    n_params = sum(math.prod(s) for k, s in table.items() if not k.endswith(buffers))
    assert n_params == 50_547_214


def test_manet_forward_shapes_and_embedding(manet_model, manet_state):
    from imer.extractors.backends.manet import MANET_EMBED_DIM
    from imer.extractors.backends.manet.network import EMBED_DIM, MANet

    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        logits_1, logits_2 = manet_model(x)
        local, glob = manet_model.branches(x)
        emb = manet_model.embed(x)
        head_1, head_2 = manet_model.fc_1(local), manet_model.fc_2(glob)
    assert logits_1.shape == logits_2.shape == (2, 7)
    assert emb.shape == (2, EMBED_DIM) and EMBED_DIM == MANET_EMBED_DIM == 1024
    torch.testing.assert_close(emb, torch.cat([local, glob], dim=1))  # local branch first
    torch.testing.assert_close(logits_1, head_1)
    torch.testing.assert_close(logits_2, head_2)
    # The cascade order of the multi-scale blocks changes the global half only.
    other = MANet(reverse_second_cascade=True).eval()
    other.load_state_dict(manet_state, strict=True)
    with torch.inference_mode():
        emb_other = other.embed(x)
    torch.testing.assert_close(emb_other[:, :512], emb[:, :512])
    assert not torch.allclose(emb_other[:, 512:], emb[:, 512:])


# -- MA-Net: checkpoints -----------------------------------------------------------------------------
def _assert_same_weights(model, state: dict) -> None:
    got = model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


def test_dataparallel_pth_loads_strictly_with_weights_only(tmp_path, manet_state, monkeypatch):
    from imer.extractors.backends.manet import load_manet

    path = tmp_path / "manet.pth"
    torch.save({f"module.{k}": v for k, v in manet_state.items()}, path)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    model = load_manet(path)
    assert calls and all(kw.get("weights_only") is True for kw in calls)
    _assert_same_weights(model, manet_state)
    assert not model.training


class RecorderMeter:
    """Same shape as the official main.py's recorder, pickled as ``__main__.RecorderMeter``."""

    def __init__(self, total_epoch: int):
        self.total_epoch = total_epoch
        self.current_epoch = 0
        self.epoch_losses = np.zeros((total_epoch, 2), dtype=np.float32)
        self.epoch_accuracy = np.zeros((total_epoch, 2), dtype=np.float32)


def _save_official_checkpoint(path: Path, state: dict, monkeypatch) -> Path:
    """Write ``state`` the way the official training script does: DataParallel keys inside
    {'epoch', 'state_dict', 'best_acc', 'optimizer', 'recorder'}, the recorder a pickled
    ``__main__.RecorderMeter`` holding numpy arrays."""
    monkeypatch.setattr(RecorderMeter, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "RecorderMeter", RecorderMeter, raising=False)
    head = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    head(torch.ones(1, 4)).sum().backward()
    opt.step()  # momentum buffers in the optimizer state, as in a real checkpoint
    torch.save(
        {
            "epoch": 40,
            "state_dict": {f"module.{k}": v for k, v in state.items()},
            "best_acc": torch.tensor([88.33]),
            "optimizer": opt.state_dict(),
            "recorder": RecorderMeter(100),
        },
        path,
    )
    return path


def test_official_training_checkpoint_layout_loads(tmp_path, manet_state, monkeypatch):
    """{'epoch', 'state_dict', 'best_acc', 'optimizer', 'recorder'} as the official main.py saves it."""
    from imer.extractors.backends.manet import load_manet

    path = _save_official_checkpoint(tmp_path / "[02-08]-[21-19]-model_best.pth.tar", manet_state, monkeypatch)
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only refuses it: the allowlist is needed
        torch.load(path, map_location="cpu", weights_only=True)
    _assert_same_weights(load_manet(path), manet_state)


# An independent, minimal re-statement of the network GCNet trained its checkpoint with, written
# with torch ops straight from the state dict (no imer module involved), so the default extractor
# can be checked against it.
def _bn_eval(x, sd: dict, p: str):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"])


def _conv(x, sd: dict, p: str, stride: int = 1):
    w = sd[f"{p}.weight"]
    return F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2)


def _shortcut(x, sd: dict, p: str, stride: int):
    if f"{p}.downsample.0.weight" not in sd:
        return x
    return _bn_eval(_conv(x, sd, f"{p}.downsample.0", stride), sd, f"{p}.downsample.1")


def _ref_basic_block(x, sd: dict, p: str, stride: int):
    out = F.relu(_bn_eval(_conv(x, sd, f"{p}.conv1", stride), sd, f"{p}.bn1"))
    out = _bn_eval(_conv(out, sd, f"{p}.conv2"), sd, f"{p}.bn2")
    return F.relu(out + _shortcut(x, sd, p, stride))


def _ref_mulscale_block(x, sd: dict, p: str, stride: int):
    """GCNet's MulScaleBlock: 3x3 conv, 4 channel groups, *both* cascades sp_x[0] -> sp_x[3]."""
    out = F.relu(_bn_eval(_conv(x, sd, f"{p}.conv1", stride), sd, f"{p}.bn1"))
    sp_x = torch.split(out, out.shape[1] // 4, dim=1)

    def cascade(c: int):
        y1 = _bn_eval(_conv(sp_x[0], sd, f"{p}.conv{c}_2_1"), sd, f"{p}.bn{c}_2_1")
        y2 = _bn_eval(_conv(F.relu(y1) + sp_x[1], sd, f"{p}.conv{c}_2_2"), sd, f"{p}.bn{c}_2_2")
        y3 = _bn_eval(_conv(F.relu(y2) + sp_x[2], sd, f"{p}.conv{c}_2_3"), sd, f"{p}.bn{c}_2_3")
        y4 = _bn_eval(_conv(F.relu(y3) + sp_x[3], sd, f"{p}.conv{c}_2_4"), sd, f"{p}.bn{c}_2_4")
        return torch.cat([y1, y2, y3, y4], dim=1)

    return F.relu(cascade(1) + cascade(2) + _shortcut(x, sd, p, stride))


def _reference_global_embedding(x, sd: dict):
    """[B, 512]: stem, layer1-2, then layer3_2 / layer4_2 of forward-order MulScaleBlocks, pooled."""
    x = F.relu(_bn_eval(_conv(x, sd, "conv1", stride=2), sd, "bn1"))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    for layer, stride in (("layer1", 1), ("layer2", 2)):
        x = _ref_basic_block(_ref_basic_block(x, sd, f"{layer}.0", stride), sd, f"{layer}.1", 1)
    for layer in ("layer3_2", "layer4_2"):
        x = _ref_mulscale_block(_ref_mulscale_block(x, sd, f"{layer}.0", 2), sd, f"{layer}.1", 1)
    return x.mean(dim=(2, 3))


def test_default_manet_is_the_forward_order_network_of_gcnet(tmp_path, manet_state, monkeypatch):
    """An official-layout checkpoint through the extractor with default options gives the embedding
    of the forward-order network (GCNet's, behind the community features); the reversed option does not."""
    pytest.importorskip("facenet_pytorch")  # load() builds the face detector too
    from imer.extractors.backends.manet import ManetConfig, load_manet
    from imer.extractors.backends.manet.network import MANet, MulScaleBlock

    for default in (
        ManetConfig().reverse_second_cascade,
        inspect.signature(load_manet).parameters["reverse_second_cascade"].default,
        inspect.signature(MANet).parameters["reverse_second_cascade"].default,
        inspect.signature(MulScaleBlock).parameters["reverse_second_cascade"].default,
    ):
        assert default is False

    path = _save_official_checkpoint(tmp_path / "model_best.pth.tar", manet_state, monkeypatch)
    crops = list(np.random.default_rng(3).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8))
    ext = build_extractor("manet", {"checkpoint": str(path)})
    emb = ext.embed_crops(crops)
    assert emb.shape == (2, 1024)

    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255  # ToTensor(), no Normalize
    with torch.inference_mode():
        ref = _reference_global_embedding(x, manet_state).numpy()
    scale = float(np.abs(ref).max())
    assert scale > 0
    np.testing.assert_allclose(emb[:, 512:], ref, rtol=1e-4, atol=1e-5 * scale)

    reversed_ext = build_extractor("manet", {"checkpoint": str(path), "reverse_second_cascade": True})
    emb_rev = reversed_ext.embed_crops(crops)
    np.testing.assert_allclose(emb_rev[:, :512], emb[:, :512], rtol=1e-5, atol=1e-6 * scale)  # local half alike
    rel = np.linalg.norm(emb_rev[:, 512:] - ref) / np.linalg.norm(ref)
    assert rel > 0.2, rel  # the reversed cascade is a different network on the global half
    assert reversed_ext.key() != ext.key()


_EXECUTED: list[str] = []


def _payload() -> None:
    _EXECUTED.append("ran")


class _Exploit:
    def __reduce__(self):
        return (_payload, ())


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    from imer.extractors.backends.manet import read_checkpoint

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": _Exploit()}, path)
    with pytest.raises(BadInput, match=r"weights_only=True.*_payload.*safetensors"):
        read_checkpoint(path)
    assert _EXECUTED == []


def test_wrong_keys_fail_with_a_clear_message(tmp_path, manet_state):
    from imer.extractors.backends.manet import check_state_dict, load_manet
    from imer.extractors.backends.manet.network import expected_state_dict_keys

    bad = dict(manet_state)
    bad["fc1.weight"] = bad.pop("fc_1.weight")
    path = tmp_path / "renamed.pth"
    torch.save(bad, path)
    with pytest.raises(BadInput) as err:
        load_manet(path)
    msg = str(err.value)
    assert "renamed.pth" in msg
    assert "1 missing key(s): fc_1.weight" in msg and "1 unexpected key(s): fc1.weight" in msg

    # The MS-Celeb-1M pre-training checkpoint differs only in its classifiers: say so.
    celeb = dict(manet_state)
    for fc in ("fc_1", "fc_2"):
        celeb[f"{fc}.weight"], celeb[f"{fc}.bias"] = torch.zeros(12666, 512), torch.zeros(12666)
    with pytest.raises(BadInput, match=r"shape mismatch.*MS-Celeb-1M.*num_classes=12666"):
        check_state_dict(celeb, expected_state_dict_keys(7), "celeb.pth")
    check_state_dict(celeb, expected_state_dict_keys(12666), "celeb.pth")  # and it fits with that option


def test_safetensors_checkpoint_loads(tmp_path, manet_state):
    from safetensors.torch import save_file

    from imer.extractors.backends.manet import load_manet

    path = tmp_path / "manet_rafdb.safetensors"
    save_file({k: v.contiguous() for k, v in manet_state.items()}, str(path))
    _assert_same_weights(load_manet(path), manet_state)


def test_missing_or_absent_checkpoint_tells_where_to_get_it(tmp_path):
    from imer.extractors.backends.manet import read_checkpoint

    with pytest.raises(BadInput, match="zeroQiaoba/GCNet.*zeroQiaoba/MERTools") as err:
        build_extractor("manet").ensure_loaded()
    assert "zengqunzhao" not in str(err.value)  # the checkpoint is GCNet's run, not the MA-Net authors' file
    with pytest.raises(BadInput, match="not found.*zeroQiaoba/GCNet"):
        read_checkpoint(tmp_path / "nope.pth")
    for name in ("garbage.pth", "garbage.safetensors"):
        (tmp_path / name).write_bytes(b"definitely not a checkpoint")
        with pytest.raises(BadInput, match=name):
            read_checkpoint(tmp_path / name)
    assert build_extractor("manet").dim == 1024  # known without weights


# -- MA-Net: the backend end to end ------------------------------------------------------------------
def test_manet_backend_end_to_end(tmp_path, manet_model, manet_state, real_frames):
    pytest.importorskip("facenet_pytorch")
    from imer.extractors.backends.manet import ManetConfig

    path = tmp_path / "manet.pth"
    torch.save({f"module.{k}": v for k, v in manet_state.items()}, path)
    ext = build_extractor("manet", {"checkpoint": str(path), "batch_size": 1})
    out = ext.extract([real_frames, [_black()]])
    vec = out[0]
    assert isinstance(vec, np.ndarray) and vec.shape == (ext.dim,) == (1024,) and vec.dtype == np.float32
    assert np.isfinite(vec).all() and vec.std() > 0
    assert out[1] == StreamStatus.missing(MissingReason.NO_FACE, "no face in 1 sampled frames")

    # Same numbers as running the network by hand on the aligned 224 crops, pixels in [0, 1].
    faces = ext._detector.detect(real_frames)
    x = torch.from_numpy(np.stack([f.crop for f in faces])).permute(0, 3, 1, 2).float() / 255
    assert x.shape == (2, 3, 224, 224)
    with torch.inference_mode():
        expected = manet_model.embed(x).mean(dim=0).numpy()
    np.testing.assert_allclose(vec, expected, rtol=1e-4, atol=1e-5)

    cfg = ManetConfig(**dataclasses.asdict(ext.config))
    assert cfg == ext.config and cfg.mean == (0.0, 0.0, 0.0)
    assert build_extractor("manet", {"checkpoint": str(path), "margin": 0.3}).key() != ext.key()
