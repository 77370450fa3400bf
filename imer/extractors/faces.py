"""Face detection and alignment shared by the video backends (MTCNN from facenet-pytorch).

One ``FaceDetector`` turns a list of RGB frames into, per frame, ``None`` or the largest confident
``Face``: its box, MTCNN's probability, five landmarks (left eye, right eye, nose, left and right
mouth corner, as seen in the image) and an aligned square crop taken from the full-resolution frame.

Why it is shaped this way:

* MTCNN's cost grows with the pixel count, so frames are shrunk until the longer side is at most
  ``detect_side`` before detection (1280x720 -> 320x180), and boxes/landmarks are scaled back. The
  crop is cut from the original frame, so the downscale never costs crop quality.
* The downscale does cost recall on small faces (a standing person in a 1920x1080 phone video has a
  face of ~10 px at 320), so only the frames still without a face are detected again at each of
  ``retry_sides`` (larger sizes, capped at the frame's own size). Frames with a face pay for one
  small pass; ``Face.detect_side`` records the size that found it.
* MTCNN's batch mode needs equal-sized images, so frames are grouped by size and run in chunks of
  ``batch_frames``; mixed sizes in one call are fine.
* An utterance is one speaker's turn, so the largest face above ``min_prob`` stands for the speaker
  (the same choice as MTCNN's ``select_largest``); smaller faces are background.
* The crop is rotated so the eyes are level (a similarity transform through the two eye landmarks,
  about the box centre), because expression encoders are trained on such aligned faces (RAF-DB,
  FER2013) and HOG is not rotation invariant.

facenet-pytorch is imported when the first detector is built, never at module import.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imer.errors import BadInput, MissingDependency
from imer.extractors.base import runtime_field

FACENET_PACKAGE = "facenet-pytorch==2.5.3"  # MTCNN weights ship inside this wheel


@dataclass(frozen=True, eq=False)
class Face:
    """The face kept for one frame. Coordinates are in full-resolution frame pixels."""

    box: np.ndarray  # float32 [4]: x1, y1, x2, y2
    prob: float  # MTCNN's face probability
    detect_side: int  # longer side of the image MTCNN found it in (detect_side, or a retry size)
    landmarks: np.ndarray  # float32 [5, 2] (x, y): left eye, right eye, nose, mouth left, mouth right
    crop: np.ndarray = field(repr=False)  # uint8 [crop_size, crop_size, 3], aligned (eyes level), RGB
    crop_landmarks: np.ndarray = field(repr=False)  # float32 [5, 2]: landmarks in crop pixels


@dataclass(frozen=True)
class FaceDetectConfig:
    """Face-detection options, declared once: the video backends' configs inherit them.

    Inheritance (not a nested field) keeps them flat keys of each backend's JSON config, so configs
    stored in existing bundles still load. Validation lives here only.
    """

    margin: float = 0.2  # context around the MTCNN box, fraction of its longer side
    min_prob: float = 0.9  # MTCNN probability a face must reach
    min_face_size: int = 20  # MTCNN minimum face, in detection pixels (after the downscale)
    detect_side: int = 320  # frames shrunk to this longer side for detection (speed)
    retry_sides: tuple[int, ...] = (640, 1280)  # no face at detect_side: retry at these (only those > detect_side)
    batch_frames: int = runtime_field(16)  # frames per MTCNN call; a speed knob, the output does not depend on it

    def __post_init__(self) -> None:
        sides = self.retry_sides
        if isinstance(sides, (int, np.integer)) and not isinstance(sides, bool):
            sides = (sides,)  # --set faceprint.retry_sides=640
        if isinstance(sides, (str, bytes)) or not hasattr(sides, "__iter__"):
            raise BadInput(f"retry_sides must be a list of pixel sizes, e.g. [640, 1280] ([] for none), got {sides!r}")
        try:
            sides = sorted({int(v) for v in sides})  # JSON gives a list; order does not matter
        except (TypeError, ValueError):
            raise BadInput(f"retry_sides must be whole pixel sizes, e.g. [640, 1280], got {self.retry_sides!r}") from None
        if self.detect_side < 24:
            raise BadInput(f"detect_side must be >= 24 pixels (MTCNN's smallest input), got {self.detect_side}")
        # A retry is only ever larger than detect_side: smaller sizes would repeat the first pass at a
        # lower resolution. Dropping them (rather than refusing) keeps an old bundle with a large
        # detect_side and no retry_sides loadable under the default retry sizes.
        object.__setattr__(self, "retry_sides", tuple(v for v in sides if v > self.detect_side))
        if not 0.0 <= self.min_prob <= 1.0:
            raise BadInput(f"min_prob must be in [0, 1], got {self.min_prob}")
        if self.margin < 0:
            raise BadInput(f"margin must be >= 0, got {self.margin}")
        if self.min_face_size < 1:
            raise BadInput(f"min_face_size must be >= 1 detection pixel, got {self.min_face_size}")
        if self.batch_frames < 1:
            raise BadInput(f"batch_frames must be >= 1, got {self.batch_frames}")


def _import_facenet():
    """facenet_pytorch, or MissingDependency naming what is actually absent.

    Its ``__init__`` also imports ``requests`` (for InceptionResnetV1 downloads we never use); a
    plain ``require`` would blame facenet-pytorch when only that dependency is missing.
    """
    try:
        import facenet_pytorch
    except ImportError as err:
        if err.name in (None, "facenet_pytorch"):
            raise MissingDependency(FACENET_PACKAGE, "face detection (MTCNN)") from None
        raise MissingDependency(err.name, f"face detection (MTCNN, via {FACENET_PACKAGE})") from None
    return facenet_pytorch


def _check_frame(frame: np.ndarray, index: int) -> None:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
        shape = getattr(frame, "shape", type(frame).__name__)
        raise BadInput(f"frame {index}: expected an RGB array [H, W, 3], got {shape}")
    if frame.dtype != np.uint8:
        raise BadInput(f"frame {index}: expected uint8 pixels, got {frame.dtype}")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise BadInput(f"frame {index}: empty frame {frame.shape}")


def detection_size(height: int, width: int, detect_side: int) -> tuple[int, int]:
    """(h, w) a frame is shrunk to for detection: longer side <= detect_side; never enlarged."""
    scale = min(1.0, detect_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def align_crop(
    frame: np.ndarray, box: np.ndarray, landmarks: np.ndarray, size: int, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """Square crop around ``box`` rotated so the eyes are level, resized to ``size``.

    The crop side is ``max(box w, h) * (1 + margin)`` centred on the box centre; output pixels map
    to the frame through one similarity transform (rotation by the eye angle + uniform scale). When
    the face is much larger than ``size`` the warp renders at native scale first and then shrinks
    with PIL's antialiased resize, so a 400-px face does not alias into a 64-px crop.

    Returns:
        (crop uint8 [size, size, 3], landmarks in crop pixel coordinates float32 [5, 2]).
    """
    from PIL import Image

    x1, y1, x2, y2 = (float(v) for v in box)
    centre = np.array([(x1 + x2) / 2.0, (y1 + y2) / 2.0])
    side = max(x2 - x1, y2 - y1, 1.0) * (1.0 + margin)
    eye_vec = landmarks[1].astype(np.float64) - landmarks[0].astype(np.float64)
    theta = math.atan2(eye_vec[1], eye_vec[0])  # eye angle in the frame; 0 when already level
    cos, sin = math.cos(theta), math.sin(theta)

    render = int(min(max(size, round(side)), 4 * size))  # warp at ~native scale, capped
    k = side / render  # frame pixels per rendered pixel
    half = render / 2.0
    # PIL maps output (x, y) -> input (a x + b y + c, d x + e y + f) in continuous coordinates.
    a, b = k * cos, -k * sin
    d, e = k * sin, k * cos
    c = centre[0] - a * half - b * half
    f = centre[1] - d * half - e * half
    img = Image.fromarray(frame).transform(
        (render, render), Image.Transform.AFFINE, (a, b, c, d, e, f), resample=Image.Resampling.BILINEAR
    )
    if render != size:
        img = img.resize((size, size), Image.Resampling.BILINEAR)  # antialiased when shrinking
    crop = np.asarray(img, dtype=np.uint8)

    # Inverse map for the landmarks: frame -> rendered -> crop pixels.
    rel = landmarks.astype(np.float64) - centre  # [5, 2]
    u = (cos * rel[:, 0] + sin * rel[:, 1]) / k + half
    v = (-sin * rel[:, 0] + cos * rel[:, 1]) / k + half
    crop_lm = np.stack([u, v], axis=1) * (size / render)
    return crop, crop_lm.astype(np.float32)


def _snap(x: np.ndarray, step: float = 1 / 16) -> np.ndarray:
    return np.round(np.asarray(x, dtype=np.float64) / step) * step


class FaceDetector:
    """Batched MTCNN detection of the largest face per frame, with aligned full-resolution crops.

    Args:
        crop_size: side of the aligned crop in pixels.
        device: torch device for MTCNN.
        **options: ``FaceDetectConfig`` fields (``min_prob`` is the final acceptance test; MTCNN's
            own stage thresholds stay at their defaults, 0.6/0.7/0.7).
    """

    def __init__(self, crop_size: int = 224, device: str = "cpu", **options: Any):
        if crop_size < 8:
            raise BadInput(f"face crop_size must be at least 8 pixels, got {crop_size}")
        try:
            self.config = FaceDetectConfig(**options)
        except TypeError:
            valid = [f.name for f in dataclasses.fields(FaceDetectConfig)]
            raise BadInput(f"unknown face-detection option(s) {sorted(set(options) - set(valid))}; valid: {valid}") from None
        self.crop_size = crop_size
        self.device = device
        facenet = _import_facenet()
        # keep_all: we choose the face ourselves (largest above min_prob), not MTCNN's first box.
        self._mtcnn = facenet.MTCNN(keep_all=True, min_face_size=self.config.min_face_size, device=device)
        self._mtcnn.eval()

    @classmethod
    def from_config(cls, cfg: FaceDetectConfig, crop_size: int, device: str = "cpu") -> FaceDetector:
        """The detector for a backend config (any ``FaceDetectConfig`` subclass)."""
        options = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(FaceDetectConfig)}
        return cls(crop_size=crop_size, device=device, **options)

    def detect(self, frames: Sequence[np.ndarray]) -> list[Face | None]:
        """One entry per frame: the largest face with prob >= min_prob, or None.

        Every frame is tried at ``detect_side``; those without a face are tried again at each
        ``retry_sides`` size (capped at the frame's longer side, sizes already tried skipped).
        """
        for i, frame in enumerate(frames):
            _check_frame(frame, i)
        out: list[Face | None] = [None] * len(frames)
        tried: list[int] = [0] * len(frames)  # longer side of the last detection size per frame
        pending = list(range(len(frames)))
        for side in (self.config.detect_side, *self.config.retry_sides):
            groups: dict[tuple[int, int], list[int]] = {}
            for i in pending:
                h, w = detection_size(frames[i].shape[0], frames[i].shape[1], side)
                if max(h, w) > tried[i]:  # sizes are increasing: a capped size equal to the last is a repeat
                    tried[i] = max(h, w)
                    groups.setdefault((h, w), []).append(i)
            if not groups:
                break
            for hw, indices in groups.items():
                self._detect_group(frames, indices, hw, out)
            pending = [i for i in pending if out[i] is None]
        return out

    def _detect_group(
        self, frames: Sequence[np.ndarray], indices: list[int], hw: tuple[int, int], out: list[Face | None]
    ) -> None:
        """Detect in ``frames[indices]`` (all shrunk to ``hw``), in chunks of batch_frames, into ``out``."""
        from PIL import Image

        h, w = hw
        if min(h, w) < self.config.min_face_size:
            return  # too small to hold a face MTCNN can find (and MTCNN errors on it)
        for start in range(0, len(indices), self.config.batch_frames):
            chunk = indices[start : start + self.config.batch_frames]
            small = np.stack(
                [
                    frames[i]
                    if frames[i].shape[:2] == (h, w)
                    else np.asarray(Image.fromarray(frames[i]).resize((w, h), Image.Resampling.BILINEAR))
                    for i in chunk
                ]
            )  # [B, h, w, 3] uint8
            boxes, probs, points = self._run_mtcnn(small)
            for j, i in enumerate(chunk):
                out[i] = self._pick(frames[i], boxes[j], probs[j], points[j], (h, w))

    def _run_mtcnn(self, small: np.ndarray) -> tuple[list, list, list]:
        import torch

        with torch.inference_mode():
            boxes, probs, points = self._mtcnn.detect(small, landmarks=True)
        return list(boxes), list(probs), list(points)

    def _pick(
        self,
        frame: np.ndarray,
        boxes: np.ndarray | None,
        probs: np.ndarray | None,
        points: np.ndarray | None,
        small_hw: tuple[int, int],
    ) -> Face | None:
        if boxes is None or probs is None or points is None or len(boxes) == 0:
            return None
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        probs = np.asarray(probs, dtype=np.float64).reshape(-1)
        points = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2)
        keep = np.flatnonzero(probs >= self.config.min_prob)
        if keep.size == 0:
            return None
        areas = (boxes[keep, 2] - boxes[keep, 0]) * (boxes[keep, 3] - boxes[keep, 1])
        best = keep[int(np.argmax(areas))]

        height, width = frame.shape[:2]
        sx, sy = width / small_hw[1], height / small_hw[0]  # detection -> full-resolution pixels
        # Snapped to 1/16 px: MTCNN's float rounding depends on how many frames share a batch
        # (oneDNN picks other kernels), and without the snap a face's crop, and so its features,
        # would change by ~1e-3 with the batch it was detected in.
        box = _snap(boxes[best] * np.array([sx, sy, sx, sy]))
        landmarks = _snap(points[best] * np.array([sx, sy]))
        # Crop from the unclipped box (a face cut by the frame edge keeps its scale; the part
        # outside the frame is black); report the box clipped to the frame.
        crop, crop_lm = align_crop(frame, box, landmarks, self.crop_size, self.config.margin)
        return Face(
            box=np.clip(box, 0.0, [width, height, width, height]).astype(np.float32),
            prob=float(probs[best]),
            detect_side=max(small_hw),
            landmarks=landmarks.astype(np.float32),
            crop=crop,
            crop_landmarks=crop_lm,
        )


def faces_per_utterance(
    detector: FaceDetector, utterances: Sequence[Sequence[np.ndarray]]
) -> list[list[Face]]:
    """Faces found in each utterance's frames (frames without a face are dropped).

    All frames of the batch go through one ``detect`` call, so MTCNN sees batches as large as
    ``batch_frames`` even when each utterance contributes only a few sampled frames.
    """
    flat: list[np.ndarray] = [frame for frames in utterances for frame in frames]
    found = detector.detect(flat)
    out: list[list[Face]] = []
    start = 0
    for frames in utterances:
        faces = found[start : start + len(frames)]
        out.append([face for face in faces if face is not None])
        start += len(frames)
    return out
