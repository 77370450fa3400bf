"""manet: 1024-d facial-expression embedding from GCNet's MA-Net RAF-DB checkpoint.

This reproduces the community ``manet_UTT`` features (GCNet / MoMKE / ComP): per sampled frame,
the largest MTCNN face, aligned and resized to 224x224, goes through MA-Net (``network.py`` in this
package, imported only by ``load()``: importing the backends must stay torch-free); the embedding
is ``[local-attention 512-d, global multi-scale 512-d]``, the input of the two classifiers; the
utterance vector is the mean over the frames where a face was found, and a missing ``NO_FACE`` status when
there is none.

Network version: GCNet and MERTools vendor the authors' first ``model/manet.py``, whose
``MulScaleBlock`` runs both cascades in forward order (``sp_x[0] -> sp_x[3]``); the checkpoint
behind the community features was trained with that code. With random weights loaded strictly into
both, this network matches that file to float rounding with the default
``reverse_second_cascade=False``; ``True`` reproduces the authors' 2023 revision of the file
(second cascade ``sp_x[3] -> sp_x[0]``), which changes the whole global half of the embedding.

Preprocessing follows the official evaluation transform, ``Resize((224, 224))`` + ``ToTensor()``:
pixels in [0, 1] and *no* mean/std normalisation (hence the defaults ``mean=0, std=1``; they are
options only so a checkpoint trained otherwise can be used).

Weights: the RAF-DB checkpoint behind the community features is GCNet's own training run, linked
from the GCNet and MERTools READMEs (not a file of the MA-Net authors); it has no model-hub entry,
so the user points ``checkpoint`` at the file. ``.safetensors`` loads directly; a
``.pth``/``.pth.tar`` loads only through ``torch.load(weights_only=True)``, never a full unpickle.
The official training script saves ``{'epoch', 'state_dict', 'best_acc', 'optimizer',
'recorder'}`` where ``recorder`` is its own ``RecorderMeter`` object holding numpy arrays; for that
one layout an inert stand-in class and numpy's array reconstruction are allow-listed for the
weights-only unpickler (no code of the file runs, the recorder is discarded). Anything else that is
not plain tensors is refused with the conversion command.

Departures: faces come from MTCNN (facenet-pytorch) with eye-level alignment, retried at larger
detection sizes when a frame has no face (``retry_sides``). GCNet's IEMOCAP faces were unaligned
tight crops, and a frame without a face added a black image to the mean; only its MOSI/MOSEI
features used aligned OpenFace faces. Here frames without a face are left out of the mean, so
features are close to the community files but not identical. ``checkpoint`` is a path inside the
config (the cache key therefore changes if the file is moved).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imer.errors import BadInput
from imer.extractors.base import Extractor, register_extractor, resolve_device, runtime_field
from imer.extractors.faces import FaceDetectConfig
from imer.types import MissingReason, Modality, StreamStatus

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imer.extractors.backends.manet.network import MANet

MANET_EMBED_DIM = 1024  # = network.EMBED_DIM (512 local + 512 global); no torch import here

CHECKPOINT_HELP = (
    "MA-Net has no model-hub entry: download the RAF-DB checkpoint behind the community manet "
    "features (GCNet's own training run, linked from the READMEs of https://github.com/"
    "zeroQiaoba/GCNet and https://github.com/zeroQiaoba/MERTools) and pass it as the manet option "
    "checkpoint (CLI: --set manet.checkpoint=/path/to/file; .pth, .pth.tar or .safetensors)"
)


@dataclass(frozen=True)
class ManetConfig(FaceDetectConfig):
    """MA-Net options; the face-detection ones (margin, min_prob, detect_side, ...) are inherited."""

    checkpoint: str | None = None  # path to the RAF-DB checkpoint (.pth, .pth.tar, .safetensors)
    num_classes: int = 7  # RAF-DB's 7 basic expressions (rows of fc_1 / fc_2 in the checkpoint)
    # False: MulScaleBlock's cascades both run 1->4, the code GCNet trained the checkpoint with;
    # True: the second runs 4->1, the authors' 2023 revision of model/manet.py.
    reverse_second_cascade: bool = False
    input_size: int = 224  # official Resize((224, 224)); the local branch cuts layer2's map in quadrants
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # official transform: ToTensor() only, no Normalize
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    batch_size: int = runtime_field(32)  # face crops per MA-Net forward (speed knob)

    def __post_init__(self) -> None:
        super().__post_init__()
        # JSON round trips turn tuples into lists and paths into strings: normalise.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", str(self.checkpoint))
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise BadInput(f"manet: mean and std need 3 values each, std > 0; got {self.mean}, {self.std}")
        if self.input_size < 64 or self.input_size % 16:
            raise BadInput(
                f"manet: input_size must be a multiple of 16 and >= 64 (official: 224), got {self.input_size}"
            )
        if self.batch_size < 1:
            raise BadInput(f"manet: batch_size must be >= 1, got {self.batch_size}")


# -- checkpoint loading ------------------------------------------------------------------------------
class _TrainingRecorder:
    """Inert stand-in for ``__main__.RecorderMeter`` pickled by the official ``main.py``.

    It has no methods: the weights-only unpickler only creates it and fills its ``__dict__``.
    """


def _official_layout_globals() -> list[Any]:
    """What the official training checkpoint needs beyond tensors: the recorder and numpy arrays."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]

    dtype_classes = [type(np.dtype(t)) for t in (np.float32, np.float64, np.int64, np.int32, np.bool_)]
    return [
        (_TrainingRecorder, "__main__.RecorderMeter"),
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),  # pickled by numpy 1.x
        (multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),  # pickled by numpy 2.x
        (np.ndarray, "numpy.ndarray"),
        (np.dtype, "numpy.dtype"),
        *dtype_classes,
    ]


def _unpickler_reason(err: Exception) -> str:
    """The one informative line of torch's long weights-only error (e.g. the refused global)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch colours part of the message
    for line in text.splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].split(". Please use")[0].strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte header length and then the JSON header's '{'."""
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` with a leading ``module.`` (DataParallel) removed.

    Accepts a bare state dict or a training checkpoint with a ``state_dict`` entry, as
    ``.safetensors`` or as a torch pickle read with ``weights_only=True`` only.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: MA-Net checkpoint not found. {CHECKPOINT_HELP}")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise BadInput(f"{path}: not a readable safetensors file ({err})") from None
    else:
        try:
            with torch.serialization.safe_globals(_official_layout_globals()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise BadInput(
                f"{path}: refused by torch.load(weights_only=True): {_unpickler_reason(err)}. "
                "imer loads .pth files only as plain tensors. Convert it once, in an environment you trust, e.g. "
                "python -c \"import torch; c = torch.load('IN.pth', map_location='cpu', weights_only=False); "
                "torch.save(c.get('state_dict', c), 'OUT.pth')\", or save it as .safetensors"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as err:
            raise BadInput(f"{path}: cannot read this file as a torch checkpoint ({err})") from None

    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise BadInput(
            f"{path}: expected a state dict (name -> tensor) or a checkpoint with a 'state_dict' entry"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}  # DataParallel's prefix


def check_state_dict(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], source: str
) -> None:
    """Raise BadInput naming missing, unexpected and mis-shaped keys (strict matching)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(
        f"{k} {tuple(state[k].shape)} (expected {expected[k]})"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k])
    )
    if not (missing or unexpected or mis_shaped):
        return

    def some(items: list[str]) -> str:
        return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {some(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {some(unexpected)}")
    if mis_shaped:
        parts.append(f"{len(mis_shaped)} shape mismatch(es): {some(mis_shaped)}")
    hint = "this file is not an MA-Net checkpoint with the official key layout"
    fc = state.get("fc_1.weight")
    if not (missing or unexpected) and fc is not None and all(k.startswith("fc_") for k in mis_shaped):
        celeb = " (the MS-Celeb-1M pre-training checkpoint, not the RAF-DB one)" if fc.shape[0] == 12666 else ""
        hint = (
            f"the classifier has {fc.shape[0]} classes{celeb}; "
            f"set the manet option num_classes={fc.shape[0]} or use the RAF-DB checkpoint"
        )
    raise BadInput(f"{source}: {'; '.join(parts)}; {hint}")


def load_manet(path: str | Path, num_classes: int = 7, reverse_second_cascade: bool = False) -> MANet:
    """MANet with the checkpoint's weights, loaded with strict key matching, in eval mode (CPU).

    ``reverse_second_cascade=False`` is the network GCNet trained its RAF-DB checkpoint with.
    """
    from imer.extractors.backends.manet.network import MANet, expected_state_dict_keys

    state = read_checkpoint(path)
    check_state_dict(state, expected_state_dict_keys(num_classes), str(path))
    model = MANet(num_classes=num_classes, reverse_second_cascade=reverse_second_cascade)
    model.load_state_dict(state, strict=True)
    return model.eval()


# -- the extractor -----------------------------------------------------------------------------------
@register_extractor("manet")
class ManetExtractor(Extractor):
    """MA-Net (GCNet's RAF-DB checkpoint) embedding of the MTCNN-aligned face, mean over frames (1024-d)."""

    modality = Modality.VIDEO
    config_class = ManetConfig
    description = "MA-Net (GCNet's RAF-DB checkpoint) [local, global] 1024-d face embedding, mean over frames"

    def load(self) -> None:
        import torch

        from imer.extractors.faces import FaceDetector

        cfg = self.config
        if not cfg.checkpoint:
            raise BadInput(f"manet: no checkpoint given. {CHECKPOINT_HELP}")
        device = resolve_device(self.device)
        self._device = torch.device(device)
        self._model = load_manet(cfg.checkpoint, cfg.num_classes, cfg.reverse_second_cascade).to(self._device)
        self._mean = torch.tensor(cfg.mean, device=self._device).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg.std, device=self._device).view(1, 3, 1, 1)
        self._detector = FaceDetector.from_config(cfg, crop_size=cfg.input_size, device=device)
        self._loaded = True

    @property
    def dim(self) -> int:
        return MANET_EMBED_DIM

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """[N, 1024] float32 embeddings of aligned uint8 RGB crops [input_size, input_size, 3]."""
        import torch

        self.ensure_loaded()
        if not crops:
            return np.zeros((0, self.dim), dtype=np.float32)
        use_amp = self._device.type == "cuda"  # fp16 only where it is fast and safe; CPU stays fp32
        out = []
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            for start in range(0, len(crops), self.config.batch_size):
                batch = np.stack(crops[start : start + self.config.batch_size])  # [B, S, S, 3] uint8
                x = torch.from_numpy(batch).to(self._device).permute(0, 3, 1, 2).float().div_(255.0)
                x = (x - self._mean) / self._std  # identity with the official (0, 1) defaults
                out.append(self._model.embed(x).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def extract(self, inputs: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray | StreamStatus]:
        from imer.extractors.faces import faces_per_utterance

        if not inputs:  # nothing to do: do not load a model for it
            return []
        self.ensure_loaded()
        faces = faces_per_utterance(self._detector, inputs)
        emb = self.embed_crops([f.crop for fs in faces for f in fs])  # [sum T, 1024]
        out: list[np.ndarray | StreamStatus] = []
        start = 0
        for frames, fs in zip(inputs, faces):
            if not fs:
                out.append(StreamStatus.missing(MissingReason.NO_FACE, f"no face in {len(frames)} sampled frames"))
                continue
            out.append(emb[start : start + len(fs)].mean(axis=0).astype(np.float32))
            start += len(fs)
        return out
