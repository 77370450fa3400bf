"""Faces (MTCNN detection with retries at larger sizes, alignment, the shared detection config) and
the offline ``faceprint`` backend. MA-Net's own tests are in ``test_manet.py``.

Real RAVDESS frames from ``../shared/data``; MTCNN runs on CPU on a handful of frames.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from imer.errors import BadInput
from imer.extractors.base import build_extractor, identity_config
from imer.types import MissingReason, StreamStatus

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
        assert face.detect_side == 320  # found in the first, fast pass: no retry
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


def _small_actor_in_a_large_frame(frame: np.ndarray, face_box: np.ndarray, face_px: int = 50):
    """The whole RAVDESS frame shrunk until MTCNN's face box is ``face_px`` tall, pasted into a dark 1920x1080
    canvas (a distant person in a phone video). Returns (canvas, expected face box)."""
    k = face_px / float(face_box[3] - face_box[1])
    w, h = round(frame.shape[1] * k), round(frame.shape[0] * k)
    x0, y0 = 1300, 620
    canvas = np.full((1080, 1920, 3), 40, np.uint8)
    canvas[y0 : y0 + h, x0 : x0 + w] = _resize(frame, w, h)
    sx, sy = w / frame.shape[1], h / frame.shape[0]
    return canvas, face_box * np.array([sx, sy, sx, sy]) + [x0, y0, x0, y0]


def test_small_face_in_a_large_frame_is_found_by_retrying_larger(real_faces, real_frames):
    """A 50-px face box in 1920x1080 is ~8 px at 320 (MTCNN's smallest is 20): no face without
    retries, a face with the default ones (found at 640 here; at 80 px it is already found at 320)."""
    from imer.extractors.faces import FaceDetector

    canvas, expected = _small_actor_in_a_large_frame(real_frames[0], real_faces[0].box)
    (no_retry,) = FaceDetector(crop_size=64, retry_sides=()).detect([canvas])
    assert no_retry is None
    (face,) = FaceDetector(crop_size=64).detect([canvas])  # default retry_sides (640, 1280)
    assert face is not None and face.prob >= 0.9
    assert face.detect_side in (640, 1280)  # the longer side of the image MTCNN found it in
    np.testing.assert_allclose(face.box, expected, atol=8)  # mapped back to full-resolution pixels
    assert face.crop.shape == (64, 64, 3) and face.crop.std() > 10


def test_retries_run_only_on_frames_without_a_face_batched_per_size(detector, real_frames, monkeypatch):
    """Pass 1 at 320 for all; then 640 and 1280 for the faceless frames only, capped at each frame's own
    size (a 640x360 frame is not tried again at 1280); one MTCNN call per size, chunked by batch_frames."""
    from imer.extractors.faces import FaceDetector

    calls: list[tuple[int, ...]] = []
    run = detector._run_mtcnn
    monkeypatch.setattr(detector, "_run_mtcnn", lambda small: calls.append(small.shape) or run(small))
    got = detector.detect([_black(1080, 1920), _black(360, 640), real_frames[0]])
    assert got[0] is None and got[1] is None and got[2] is not None and got[2].detect_side == 320
    assert calls == [(3, 180, 320, 3), (2, 360, 640, 3), (1, 720, 1280, 3)]

    calls.clear()
    small_batches = FaceDetector(crop_size=64, batch_frames=2)
    run2 = small_batches._run_mtcnn
    monkeypatch.setattr(small_batches, "_run_mtcnn", lambda small: calls.append(small.shape) or run2(small))
    assert small_batches.detect([_black(200, 200)] * 3) == [None] * 3  # smaller than every size: one pass
    assert calls == [(2, 200, 200, 3), (1, 200, 200, 3)]


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


# -- FaceDetectConfig: declared once, inherited by the video backends ---------------------------------
def test_face_detect_config_is_shared_flat_and_validated_once():
    from imer.extractors.backends.faceprint import FaceprintConfig
    from imer.extractors.backends.manet import ManetConfig
    from imer.extractors.faces import FaceDetectConfig

    shared = [f.name for f in dataclasses.fields(FaceDetectConfig)]
    assert shared == ["margin", "min_prob", "min_face_size", "detect_side", "retry_sides", "batch_frames"]
    for cls in (FaceprintConfig, ManetConfig):
        assert issubclass(cls, FaceDetectConfig)
        own = {f.name: f for f in dataclasses.fields(cls)}
        assert set(shared) <= set(own)  # flat keys, as bundles store them
        assert "batch_frames" not in identity_config(cls())  # a speed knob, out of the cache key
        assert cls().retry_sides == (640, 1280)
        # Validation lives in FaceDetectConfig: both backends refuse the same way.
        with pytest.raises(BadInput, match="min_prob"):
            cls(min_prob=1.5)
        with pytest.raises(BadInput, match="detect_side must be >= 24"):
            cls(detect_side=16)
        with pytest.raises(BadInput, match=r"retry_sides.*\[640, 1280\]"):
            cls(retry_sides="640,1280")

    # JSON gives lists: back to a sorted tuple of ints; sizes not above detect_side are never used.
    assert FaceDetectConfig(retry_sides=[1280, 640.0, 640]).retry_sides == (640, 1280)
    assert FaceDetectConfig(retry_sides=960).retry_sides == (960,)
    assert FaceDetectConfig(detect_side=640).retry_sides == (1280,)
    assert FaceDetectConfig(retry_sides=[]).retry_sides == ()
    cfg = FaceprintConfig(crop_size=80, retry_sides=(960,))
    assert FaceprintConfig(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg


def test_configs_from_bundles_written_before_retry_sides_still_load():
    """Old bundles stored the flat keys without retry_sides (and JSON lists): they load as before."""
    from imer.extractors.backends.faceprint import FaceprintConfig
    from imer.extractors.backends.manet import ManetConfig

    old_faceprint = {
        **{"crop_size": 64, "orientations": 9, "pixels_per_cell": 8, "cells_per_block": 2},
        **{"margin": 0.2, "min_prob": 0.9, "min_face_size": 20, "detect_side": 640},
    }
    cfg = FaceprintConfig(**old_faceprint)
    assert cfg.detect_side == 640 and cfg.retry_sides == (1280,)
    old_manet = {
        **{"checkpoint": "/models/manet.pth", "num_classes": 7, "reverse_second_cascade": True, "input_size": 224},
        **{"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
        **{"margin": 0.2, "min_prob": 0.9, "min_face_size": 20, "detect_side": 320},
    }
    cfg = ManetConfig(**old_manet)
    assert cfg.reverse_second_cascade is True  # what the bundle recorded wins over the new default
    assert cfg.mean == (0.0, 0.0, 0.0) and cfg.retry_sides == (640, 1280)


def test_detector_from_config_takes_the_shared_fields(real_frames):
    pytest.importorskip("facenet_pytorch")
    from imer.extractors.backends.manet import ManetConfig
    from imer.extractors.faces import FaceDetectConfig, FaceDetector

    cfg = ManetConfig(margin=0.3, min_prob=0.8, detect_side=256, retry_sides=[512], batch_frames=4)
    det = FaceDetector.from_config(cfg, crop_size=cfg.input_size)
    assert det.crop_size == 224
    assert det.config == FaceDetectConfig(margin=0.3, min_prob=0.8, detect_side=256, retry_sides=(512,), batch_frames=4)
    (face,) = det.detect(real_frames[:1])
    assert face is not None and face.detect_side == 256 and face.crop.shape == (224, 224, 3)
    with pytest.raises(BadInput, match="unknown face-detection option.*detect_sides"):
        FaceDetector(crop_size=64, detect_sides=320)


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
    assert out[1] == StreamStatus.missing(MissingReason.NO_FACE, "no face in 1 sampled frames")
    assert out[2] == StreamStatus.missing(MissingReason.NO_FACE, "no face in 0 sampled frames")
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
    for change in ({"orientations": 12}, {"crop_size": 96}, {"min_prob": 0.95}, {"detect_side": 480}, {"retry_sides": []}):
        assert build_extractor("faceprint", change).key() != base.key(), change
    assert build_extractor("faceprint", {"batch_frames": 4}).key() == base.key()  # speed only
    assert build_extractor("faceprint", {"orientations": 12}).dim == 1764 // 9 * 12 + 19
    assert build_extractor("faceprint", {"crop_size": 96}).dim == 11 * 11 * 4 * 9 + 19
    # The config round-trips through its dict (what bundles store).
    cfg = FaceprintConfig(crop_size=80)
    assert FaceprintConfig(**dataclasses.asdict(cfg)) == cfg
    with pytest.raises(BadInput, match="HOG cells"):
        FaceprintConfig(crop_size=8, pixels_per_cell=8, cells_per_block=2)
    with pytest.raises(BadInput, match="unknown option"):
        build_extractor("faceprint", {"orientation": 9})


