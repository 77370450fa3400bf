"""wav2vec 2.0 (and HuBERT / WavLM) utterance embeddings: hidden states pooled over time.

Defaults: ``facebook/wav2vec2-large-960h-lv60-self`` (1024-d), the **mean of the last 4 hidden
states**, averaged over every valid frame; audio longer than 20 s is cut into chunks.

Any checkpoint that ``transformers.AutoModel`` loads as a wav2vec2-style encoder works (Wav2Vec2,
HuBERT, WavLM, Data2VecAudio): a hub id or a local ``save_pretrained`` folder.

Choices, and why:

* **Normalisation**: each model input is normalised by the checkpoint's own feature extractor
  (``AutoFeatureExtractor``; zero mean / unit variance when its ``do_normalize`` says so). A
  folder without one gets zero mean / unit variance, as ``Wav2Vec2FeatureExtractor`` does by
  default. Inputs are normalised one by one, before padding, so padding never leaks into the
  statistics.
* **Batching without changing results**: checkpoints with ``feat_extract_norm == "layer"``
  (the large lv60 family, HuBERT/WavLM large) take an ``attention_mask``: inputs of different
  lengths share a batch (sorted by length) and give the same vectors as one-by-one runs.
  ``"group"`` checkpoints (wav2vec2-base, HuBERT/WavLM base) normalise the first conv layer over
  the whole padded length, so padding would change their output; they are only ever batched with
  inputs of identical length.
* **Valid frames only**: frames are counted with the model's own
  ``_get_feat_extract_output_lengths``, so padded frames never enter the mean.
* **Chunking** (``chunk_seconds``): attention over a minute of audio costs memory quadratic in
  length, and the models were pre-trained on crops of a few seconds. Longer audio is split into
  ``ceil(len / chunk)`` near-equal chunks (each <= ``chunk_seconds``, none a tiny tail), each
  normalised and encoded on its own; the utterance vector is the mean over all frames of all
  chunks, i.e. chunks weighted by their frame counts. ``None`` never chunks.
* **Layer indices**: ``-1`` is the model's output (``last_hidden_state``, after the final layer
  norm of the large lv60 / HuBERT / WavLM large models), ``-2`` the layer before, and so on;
  ``0`` is the input of the first transformer layer. See ``imer.extractors.hf.combine_layers``
  for why ``-1`` is pinned (transformers 4 and 5 disagree about ``hidden_states[-1]``).
* Audio too short to yield one frame (25 ms for wav2vec2) is ``StreamStatus.missing(SILENT_AUDIO)``;
  ``None`` is ``StreamStatus.missing(NO_AUDIO_TRACK)``, non-finite samples ``StreamStatus.missing(UNREADABLE)``.

Departures from the community ``wav2vec-large-c-UTT`` features (ComP's released IEMOCAP set):
those are fairseq wav2vec **1.0** large context features (512-d), which transformers cannot load;
this backend is the wav2vec 2.0 model the paper cites, so its vectors (1024-d) are not
interchangeable with the community files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from imer.errors import BadInput
from imer.extractors.base import register_extractor
from imer.extractors.hf import (
    HFExtractor,
    check_choice,
    check_layers,
    check_positive,
    combine_layers,
    equal_length_batches,
    length_sorted_batches,
    masked_sum,
    pad_1d,
    parse_layers,
    runtime_field,
    wants_hidden_states,
)
from imer.types import MissingReason, Modality, StreamStatus

SAMPLE_RATE = 16000  # the pipeline's audio contract, and what every wav2vec2-style model expects


@dataclass(frozen=True)
class Wav2Vec2Config:
    """Which checkpoint, which layers, how to pool. Paths and devices are not config."""

    # A *large* wav2vec 2.0, pre-trained on Libri-Light 60k h and self-trained/fine-tuned on
    # LibriSpeech 960 h: the large lv60 family the MER toolkits (GCNet/MERTools use
    # "wav2vec2-large-960h") draw from, with layer-norm feature encoders, so batches can be padded
    # with an attention mask at no cost in accuracy. For paralinguistic-only features a
    # pre-trained-only checkpoint (facebook/wav2vec2-large-lv60, microsoft/wavlm-large) with middle
    # layers is a good alternative: set model= and layers=.
    model: str = "facebook/wav2vec2-large-960h-lv60-self"
    # Hidden-state indices: 0 = input to the first transformer layer, -1 = the model's output.
    layers: tuple[int, ...] = (-4, -3, -2, -1)
    layer_pool: str = "mean"  # "mean" or "sum" of the chosen layers (ComP's DeBERTa features sum)
    time_pool: str = "mean"  # over valid frames; the only option (the community "UTT" features)
    chunk_seconds: float | None = 20.0  # longer audio is encoded in chunks; None: never chunk
    batch_size: int = runtime_field(8)  # model inputs (chunks) per forward pass
    fp16: bool = True  # autocast to fp16 on CUDA only; ignored on CPU

    def __post_init__(self) -> None:
        what = "wav2vec2"
        object.__setattr__(self, "layers", parse_layers(self.layers, what))
        check_choice(self.layer_pool, ("mean", "sum"), "layer_pool", what)
        check_choice(self.time_pool, ("mean",), "time_pool", what)
        check_positive(self.batch_size, "batch_size", what)
        if self.chunk_seconds is not None:
            if not isinstance(self.chunk_seconds, (int, float)) or not self.chunk_seconds >= 0.1:
                raise BadInput(
                    f"{what}: chunk_seconds must be at least 0.1 (or null: never chunk); got {self.chunk_seconds!r}"
                )
            object.__setattr__(self, "chunk_seconds", float(self.chunk_seconds))


@register_extractor("wav2vec2")
class Wav2Vec2Extractor(HFExtractor):
    """wav2vec 2.0 / HuBERT / WavLM: chosen hidden states, mean over valid frames."""

    modality = Modality.AUDIO
    config_class = Wav2Vec2Config
    description = "wav2vec 2.0 large (or any HuBERT/WavLM) hidden states, mean over time (1024-d); needs the model"
    known_dims = {
        "facebook/wav2vec2-large-960h-lv60-self": 1024,
        "facebook/wav2vec2-large-lv60": 1024,
        "facebook/wav2vec2-large-960h": 1024,
        "facebook/wav2vec2-base": 768,
        "facebook/wav2vec2-base-960h": 768,
    }
    offline_hint = "or use the offline audio backend 'egemaps'"

    def load(self) -> None:
        if self._loaded:  # the model itself is cached by _load_model, even if a check below failed
            return
        model = self._load_model()
        cfg = model.config
        if not hasattr(model, "_get_feat_extract_output_lengths"):
            raise BadInput(
                f"wav2vec2: {self.config.model!r} ({type(model).__name__}) is not a wav2vec2-style audio encoder"
            )
        check_layers(self.config.layers, self._n_hidden_states(), "wav2vec2")
        # The large lv60 family ("layer") is exact under padding + attention mask; "group" is not.
        self._use_mask = getattr(cfg, "feat_extract_norm", "group") == "layer"
        self._min_samples = self._receptive_field(cfg)
        try:
            fe = self._load("AutoFeatureExtractor")
        except BadInput:
            fe = None  # no preprocessor_config.json: normalise as Wav2Vec2FeatureExtractor does
        if fe is not None and getattr(fe, "sampling_rate", SAMPLE_RATE) != SAMPLE_RATE:
            raise BadInput(
                f"wav2vec2: {self.config.model!r} expects {fe.sampling_rate} Hz audio; imer decodes to {SAMPLE_RATE} Hz"
            )
        self._fe = fe
        if self.config.chunk_seconds is not None and self.config.chunk_seconds * SAMPLE_RATE < 2 * self._min_samples:
            need = 2 * self._min_samples / SAMPLE_RATE
            raise BadInput(f"wav2vec2: chunk_seconds={self.config.chunk_seconds} is too short for this model (>= {need:.3f})")
        self._loaded = True

    @staticmethod
    def _receptive_field(cfg: Any) -> int:
        """Fewest samples that give one output frame (400 = 25 ms for the wav2vec2 CNN)."""
        n = 1
        for k, s in reversed(list(zip(getattr(cfg, "conv_kernel", (10,)), getattr(cfg, "conv_stride", (5,))))):
            n = (n - 1) * s + k
        return n

    def _normalise(self, x: np.ndarray) -> np.ndarray:
        """One model input, normalised on its own valid samples (before any padding)."""
        if self._fe is None:
            return ((x - x.mean()) / np.sqrt(x.var() + 1e-7)).astype(np.float32)
        feats = self._fe(x, sampling_rate=SAMPLE_RATE, return_tensors="np")
        if "input_values" not in feats:
            raise BadInput(f"wav2vec2: {self.config.model!r} has a feature extractor that does not produce raw input_values")
        return np.asarray(feats["input_values"][0], dtype=np.float32)

    def _chunks(self, x: np.ndarray) -> list[np.ndarray]:
        """Near-equal pieces, each at most ``chunk_seconds`` long (see module docstring)."""
        if self.config.chunk_seconds is None:
            return [x]
        size = int(round(self.config.chunk_seconds * SAMPLE_RATE))
        return np.array_split(x, max(1, math.ceil(x.shape[0] / size)))

    def extract(self, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray | StreamStatus]:
        """One [dim] float32 vector per waveform (16 kHz mono float32), or Missing."""
        if not inputs:  # nothing to do: do not load a model for it
            return []
        self.ensure_loaded()
        import torch

        out: list[np.ndarray | StreamStatus] = [StreamStatus.missing(MissingReason.EXTRACTOR_FAILED)] * len(inputs)
        pieces: list[np.ndarray] = []  # every model input (chunk) of every utterance
        owner: list[int] = []  # which utterance each piece belongs to
        for i, x in enumerate(inputs):
            if x is None:
                out[i] = StreamStatus.missing(MissingReason.NO_AUDIO_TRACK)
                continue
            x = np.asarray(x, dtype=np.float32).squeeze()
            if x.ndim != 1:
                raise BadInput(f"wav2vec2: expects mono 1-D audio, got an array of shape {x.shape}")
            if x.shape[0] < self._min_samples:
                ms = 1000 * self._min_samples / SAMPLE_RATE
                out[i] = StreamStatus.missing(MissingReason.SILENT_AUDIO, f"only {x.shape[0]} samples; the model needs {ms:.0f} ms")
                continue
            if not np.isfinite(x).all():
                out[i] = StreamStatus.missing(MissingReason.UNREADABLE, "non-finite audio samples")
                continue
            for piece in self._chunks(x):
                pieces.append(self._normalise(piece))
                owner.append(i)
        if not pieces:
            return out

        d = self.dim
        sums = np.zeros((len(inputs), d), np.float64)
        frames = np.zeros(len(inputs), np.int64)
        lengths = [p.shape[0] for p in pieces]
        batches = length_sorted_batches if self._use_mask else equal_length_batches
        with self._inference():
            for idx in batches(lengths, self.config.batch_size):
                wav, lens = pad_1d([pieces[j] for j in idx])  # (B, L), (B,)
                wav_t = torch.from_numpy(wav).to(self.torch_device)
                lens_t = torch.from_numpy(lens)
                kwargs: dict[str, Any] = {}
                if self._use_mask:
                    am = torch.arange(wav.shape[1])[None, :] < lens_t[:, None]  # (B, L)
                    kwargs["attention_mask"] = am.long().to(self.torch_device)
                res = self._model(wav_t, output_hidden_states=wants_hidden_states(self.config.layers), **kwargs)
                hidden = combine_layers(res, self.config.layers, self.config.layer_pool)  # (B, T, D)
                n_valid = self._model._get_feat_extract_output_lengths(lens_t).to(hidden.device)  # (B,)
                valid = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < n_valid[:, None]  # (B, T)
                s, c = masked_sum(hidden, valid)
                s, c = s.double().cpu().numpy(), c.cpu().numpy().astype(np.int64)
                for row, j in enumerate(idx):
                    sums[owner[j]] += s[row]
                    frames[owner[j]] += c[row]
        for i in set(owner):
            out[i] = (sums[i] / max(frames[i], 1)).astype(np.float32)
        return out
