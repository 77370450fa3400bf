"""Faces (MTCNN detection + alignment), the offline ``faceprint`` backend and MA-Net (network + backend).

Real RAVDESS frames from ``../shared/data``; MTCNN runs on CPU on a handful of frames shrunk to
320 px, and every MA-Net checkpoint is a random-initialised one written to a temp dir.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from imer.errors import BadInput
from imer.extractors.base import Missing, build_extractor
from imer.types import MissingReason

CLIP = "av-clips/ravdess-actor01/Actor_01/01-01-08-02-02-02-01.mp4"  # surprised, strong intensity


# -- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_frames(shared_data) -> list[np.ndarray]:
    """Two 1280x720 RGB frames, ~1 s apart, of a RAVDESS actor facing the camera."""
    av = pytest.importorskip("av")
    path = shared_data / CLIP
    if not path.is_file():
        pytest.skip(f"{path} not found")
    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in (15, 45):
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == 2:
                break
    assert len(frames) == 2 and frames[0].shape == (720, 1280, 3)
    return frames


@pytest.fixture(scope="module")
def detector():
    pytest.importorskip("facenet_pytorch")
    from imer.extractors.faces import FaceDetector

    return FaceDetector(crop_size=112, detect_side=320)


@pytest.fixture(scope="module")
def real_faces(detector, real_frames):
    return detector.detect(real_frames)


def _black(h: int = 480, w: int = 640) -> np.ndarray:
    return np.zeros((h, w, 3), np.uint8)


def _resize(frame: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((w, h), Image.Resampling.BILINEAR))


# -- FaceDetector ------------------------------------------------------------------------------------
def test_detector_finds_the_face_on_real_frames(real_faces, real_frames):
    for face, frame in zip(real_faces, real_frames):
        assert face is not None
        h, w = frame.shape[:2]
        x1, y1, x2, y2 = face.box
        assert face.prob >= 0.9
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        # RAVDESS: one actor, centred, head about a third of the frame height.
        assert 0.2 * h < y2 - y1 < 0.9 * h and 0.1 * w < x2 - x1 < 0.5 * w
        assert abs((x1 + x2) / 2 - w / 2) < 0.15 * w
        # Landmarks (full resolution) inside the box, eyes above the mouth, left eye on the left.
        lm = face.landmarks
        assert lm.shape == (5, 2)
        assert np.all((lm[:, 0] > x1) & (lm[:, 0] < x2) & (lm[:, 1] > y1) & (lm[:, 1] < y2))
        assert lm[0, 0] < lm[1, 0] and lm[:2, 1].max() < lm[3:, 1].min()
        # Aligned crop: requested size, eyes level, face centred.
        assert face.crop.shape == (112, 112, 3) and face.crop.dtype == np.uint8
        clm = face.crop_landmarks
        assert abs(clm[0, 1] - clm[1, 1]) < 0.5
        assert np.all((clm > 0) & (clm < 112))
        assert face.crop.std() > 10  # real image content, not a black fill


def test_detector_keeps_the_largest_face(detector, real_faces, real_frames):
    """Two copies of the actor (1/2 and 1/4 scale) on one canvas: the larger one is returned."""
    from imer.extractors.faces import FaceDetector

    frame, face = real_frames[0], real_faces[0]
    big, small = _resize(frame, 640, 360), _resize(frame, 320, 180)
    det = FaceDetector(crop_size=64, detect_side=640)  # the 1/4-scale face must be detectable too

    both = _black(720, 1280)
    both[:360, :640] = big
    both[500:680, 900:1220] = small
    only_small = _black(720, 1280)
    only_small[500:680, 900:1220] = small
    got_both, got_small = det.detect([both, only_small])

    assert got_both is not None and got_small is not None
    np.testing.assert_allclose(got_both.box, face.box / 2, atol=20)
    np.testing.assert_allclose(got_small.box, face.box / 4 + [900, 500, 900, 500], atol=12)


def test_detector_finds_nothing_in_noise_or_black(detector):
    noise = np.random.default_rng(0).integers(0, 256, (360, 640, 3), dtype=np.uint8)
    assert detector.detect([noise, _black()]) == [None, None]
    assert detector.detect([]) == []


def test_detector_batches_frames_of_different_sizes(detector, real_faces, real_frames):
    """Mixed sizes in one call: results stay in input order and boxes map back to each frame."""
    frame = real_frames[0]
    half = _resize(frame, 640, 360)
    square = np.ascontiguousarray(frame[:, 280:1000])  # 720x720, face kept
    got = detector.detect([half, _black(), square, frame])
    assert got[1] is None
    assert all(g is not None for g in (got[0], got[2], got[3]))
    ref = real_faces[0].box
    np.testing.assert_allclose(got[3].box, ref, atol=1e-3)  # same frame, same answer
    np.testing.assert_allclose(got[0].box, ref / 2, atol=12)
    np.testing.assert_allclose(got[2].box, ref - [280, 0, 280, 0], atol=25)


def test_align_crop_levels_a_tilted_pair_of_eyes():
    """Synthetic frame with two bright 'eyes' at 20 degrees: the crop shows them level, where predicted."""
    from imer.extractors.faces import align_crop

    frame = _black(400, 400)
    centre, half_iod, angle = np.array([200.0, 180.0]), 40.0, math.radians(20)
    offset = half_iod * np.array([math.cos(angle), math.sin(angle)])
    eyes = np.stack([centre - offset, centre + offset])
    for x, y in eyes:
        frame[int(y) - 3 : int(y) + 4, int(x) - 3 : int(x) + 4] = 255
    landmarks = np.concatenate([eyes, [[200, 220], [175, 260], [225, 260]]])
    box = np.array([120.0, 100.0, 280.0, 300.0])

    crop, crop_lm = align_crop(frame, box, landmarks, size=64, margin=0.2)
    assert crop.shape == (64, 64, 3)
    assert abs(crop_lm[0, 1] - crop_lm[1, 1]) < 1e-3  # eyes level
    # Crop scale: box side 200 * 1.2 = 240 frame px -> 64 crop px.
    assert crop_lm[1, 0] - crop_lm[0, 0] == pytest.approx(2 * half_iod * 64 / 240, rel=1e-4)
    # The bright dots really are where the returned landmarks say.
    for x, y in crop_lm[:2]:
        assert crop[int(round(y)), int(round(x))].max() > 100
    assert crop[5, 5].max() == 0  # background stays black


def test_detector_rejects_bad_frames(detector):
    with pytest.raises(BadInput, match="frame 1"):
        detector.detect([_black(), np.zeros((10, 10), np.uint8)])
    with pytest.raises(BadInput, match="uint8"):
        detector.detect([np.zeros((10, 10, 3), np.float32)])


# -- faceprint ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def faceprint():
    pytest.importorskip("facenet_pytorch")
    pytest.importorskip("skimage")
    return build_extractor("faceprint")


def test_faceprint_dim_output_and_no_face(faceprint, real_frames):
    assert faceprint.dim == 1764 + 19  # HOG 7x7 blocks x 2x2 cells x 9 bins + landmark geometry
    out = faceprint.extract([real_frames, [_black()], []])
    vec = out[0]
    assert isinstance(vec, np.ndarray) and vec.shape == (faceprint.dim,) and vec.dtype == np.float32
    assert np.isfinite(vec).all() and vec[:1764].std() > 0
    assert out[1] == Missing(MissingReason.NO_FACE, "no face in 1 sampled frames")
    assert out[2] == Missing(MissingReason.NO_FACE, "no face in 0 sampled frames")
    # The utterance vector is the mean of its frames' vectors.
    single = faceprint.extract([[f] for f in real_frames])
    np.testing.assert_allclose(vec, (single[0] + single[1]) / 2, rtol=1e-5, atol=1e-6)


def test_faceprint_geometry_is_scale_free(real_faces):
    from imer.extractors.backends.faceprint import landmark_geometry

    lm = real_faces[0].crop_landmarks
    g = landmark_geometry(lm, 112)
    np.testing.assert_allclose(landmark_geometry(lm * 2, 224), g, rtol=1e-5)
    assert g.shape == (19,)


def test_faceprint_config_key_and_dim_follow_the_options():
    from imer.extractors.backends.faceprint import FaceprintConfig

    base = build_extractor("faceprint")
    assert base.key() == build_extractor("faceprint", {}).key()
    for change in ({"orientations": 12}, {"crop_size": 96}, {"min_prob": 0.95}, {"detect_side": 480}):
        assert build_extractor("faceprint", change).key() != base.key(), change
    assert build_extractor("faceprint", {"orientations": 12}).dim == 1764 // 9 * 12 + 19
    assert build_extractor("faceprint", {"crop_size": 96}).dim == 11 * 11 * 4 * 9 + 19
    # The config round-trips through its dict (what bundles store).
    cfg = FaceprintConfig(crop_size=80)
    assert FaceprintConfig(**dataclasses.asdict(cfg)) == cfg
    with pytest.raises(BadInput, match="HOG cells"):
        FaceprintConfig(crop_size=8, pixels_per_cell=8, cells_per_block=2)
    with pytest.raises(BadInput, match="unknown option"):
        build_extractor("faceprint", {"orientation": 9})


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
    from imer.extractors.manet import MANet

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
    from imer.extractors.manet import expected_state_dict_keys

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
    from imer.extractors.manet import EMBED_DIM, MANet

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
    other = MANet(reverse_second_cascade=False).eval()
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


def test_official_training_checkpoint_layout_loads(tmp_path, manet_state, monkeypatch):
    """{'epoch', 'state_dict', 'best_acc', 'optimizer', 'recorder'} as the official main.py saves it."""
    from imer.extractors.backends.manet import load_manet

    monkeypatch.setattr(RecorderMeter, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "RecorderMeter", RecorderMeter, raising=False)
    head = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    head(torch.ones(1, 4)).sum().backward()
    opt.step()  # momentum buffers in the optimizer state, as in a real checkpoint
    path = tmp_path / "[02-08]-[21-19]-model_best.pth.tar"
    torch.save(
        {
            "epoch": 40,
            "state_dict": {f"module.{k}": v for k, v in manet_state.items()},
            "best_acc": torch.tensor([88.33]),
            "optimizer": opt.state_dict(),
            "recorder": RecorderMeter(100),
        },
        path,
    )
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only refuses it: the allowlist is needed
        torch.load(path, map_location="cpu", weights_only=True)
    _assert_same_weights(load_manet(path), manet_state)


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
    from imer.extractors.manet import expected_state_dict_keys

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

    with pytest.raises(BadInput, match="zengqunzhao/MA-Net"):
        build_extractor("manet").ensure_loaded()
    with pytest.raises(BadInput, match="not found.*zengqunzhao/MA-Net"):
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
    assert out[1] == Missing(MissingReason.NO_FACE, "no face in 1 sampled frames")

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
