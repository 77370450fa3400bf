"""faceprint: a face descriptor that needs no downloaded weights (HOG + landmark geometry).

Per frame, MTCNN (facenet-pytorch, weights inside the wheel) finds the largest face; the aligned
crop (eyes level) is turned to grayscale and described by HOG (Dalal & Triggs 2005, via
``skimage.feature.hog``), which captures the edge layout of brows, eyes and mouth that expressions
change. Appended are 19 geometry numbers from the five MTCNN landmarks, all scale-free: the ten
landmark coordinates in the aligned crop divided by its side, and the nine pairwise distances other
than the eye-to-eye one, divided by the inter-ocular distance (mouth opening and brow-free face
proportions move with expression; the eye distance itself is 1 by construction and dropped).

Per utterance the per-frame vectors are averaged over the frames where a face was found; when no
sampled frame has a face the utterance is a missing ``NO_FACE`` status.

It is weaker than a trained expression network (MA-Net), but real, deterministic and offline,
which is what tests, CI and first runs need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from imer.errors import BadInput
from imer.extractors.base import Extractor, register_extractor, require, resolve_device
from imer.extractors.faces import FaceDetectConfig
from imer.types import MissingReason, Modality, StreamStatus

N_LANDMARKS = 5
GEOMETRY_DIM = 2 * N_LANDMARKS + (N_LANDMARKS * (N_LANDMARKS - 1) // 2 - 1)  # 10 coords + 9 distances


@dataclass(frozen=True)
class FaceprintConfig(FaceDetectConfig):
    """HOG options; the face-detection ones (margin, min_prob, detect_side, ...) are inherited."""

    crop_size: int = 64  # aligned grayscale crop side: 8x8 HOG cells of 8 px
    orientations: int = 9  # HOG bins (Dalal & Triggs' default)
    pixels_per_cell: int = 8
    cells_per_block: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pixels_per_cell < 1 or self.cells_per_block < 1 or self.orientations < 1:
            raise BadInput("faceprint: orientations, pixels_per_cell and cells_per_block must be >= 1")
        if self.crop_size // self.pixels_per_cell < self.cells_per_block:
            raise BadInput(
                f"faceprint: crop_size {self.crop_size} holds {self.crop_size // self.pixels_per_cell} "
                f"HOG cells per side, fewer than cells_per_block={self.cells_per_block}; "
                "raise crop_size or lower pixels_per_cell"
            )

    @property
    def hog_dim(self) -> int:
        """Length of skimage's HOG vector for this config (blocks x cells per block x bins)."""
        cells = self.crop_size // self.pixels_per_cell
        blocks = cells - self.cells_per_block + 1
        return blocks * blocks * self.cells_per_block**2 * self.orientations


def landmark_geometry(crop_landmarks: np.ndarray, crop_size: int) -> np.ndarray:
    """19 scale-free numbers: landmarks / crop side (10) + distances / inter-ocular distance (9)."""
    lm = crop_landmarks.astype(np.float64)
    coords = (lm / crop_size).reshape(-1)
    iod = max(float(np.linalg.norm(lm[1] - lm[0])), 1e-6)
    dists = [
        np.linalg.norm(lm[i] - lm[j]) / iod
        for i in range(N_LANDMARKS)
        for j in range(i + 1, N_LANDMARKS)
        if (i, j) != (0, 1)  # the eye distance: 1 by construction
    ]
    return np.concatenate([coords, np.asarray(dists)]).astype(np.float32)


@register_extractor("faceprint")
class FaceprintExtractor(Extractor):
    """HOG of the aligned face + landmark geometry, averaged over frames; no downloaded weights."""

    modality = Modality.VIDEO
    config_class = FaceprintConfig
    description = "HOG of the MTCNN-aligned face + 5-landmark geometry, mean over frames (offline)"
    offline = True

    def load(self) -> None:
        from imer.extractors.faces import FaceDetector

        skfeature = require("skimage.feature", "scikit-image", "the faceprint descriptor (HOG)", "offline")
        self._hog = skfeature.hog
        cfg = self.config
        self._detector = FaceDetector.from_config(cfg, crop_size=cfg.crop_size, device=resolve_device(self.device))
        self._loaded = True

    @property
    def dim(self) -> int:
        return self.config.hog_dim + GEOMETRY_DIM

    def describe_face(self, crop: np.ndarray, crop_landmarks: np.ndarray) -> np.ndarray:
        """The per-frame vector for one aligned crop (uint8 RGB [S, S, 3], S = crop_size)."""
        cfg = self.config
        # ITU-R 601 luma, as PIL's convert("L"), in [0, 1].
        gray = crop.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255.0
        hog = self._hog(
            gray,
            orientations=cfg.orientations,
            pixels_per_cell=(cfg.pixels_per_cell, cfg.pixels_per_cell),
            cells_per_block=(cfg.cells_per_block, cfg.cells_per_block),
            block_norm="L2-Hys",
            feature_vector=True,
        )
        return np.concatenate([hog.astype(np.float32), landmark_geometry(crop_landmarks, cfg.crop_size)])

    def extract(self, inputs: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray | StreamStatus]:
        from imer.extractors.faces import faces_per_utterance

        if not inputs:  # nothing to do: do not load a model for it
            return []
        self.ensure_loaded()
        out: list[np.ndarray | StreamStatus] = []
        for frames, faces in zip(inputs, faces_per_utterance(self._detector, inputs)):
            if not faces:
                out.append(StreamStatus.missing(MissingReason.NO_FACE, f"no face in {len(frames)} sampled frames"))
                continue
            vecs = np.stack([self.describe_face(f.crop, f.crop_landmarks) for f in faces])  # [T, D]
            out.append(vecs.mean(axis=0).astype(np.float32))
        return out
