"""DeBERTa (or any BERT-family encoder) utterance embeddings, as in ComP's text features.

Defaults: ``microsoft/deberta-large`` (DeBERTa v1 large, 1024-d), the **sum of the last 4 hidden
states**, averaged over the utterance's tokens **excluding padding and special tokens**
([CLS]/[SEP], ``<s>``/``</s>``), up to 512 tokens. This is the recipe of the community
``deberta-large-4-UTT`` features ComP was trained on (GCNet/MERTools
``extract_text_embedding.py``: ``torch.stack(hidden_states)[[-4,-3,-2,-1]].sum(0)``, tokens
``1:len-1``, then the mean).

Any ``AutoModel`` text encoder with a tokenizer works (BERT, RoBERTa, DeBERTa v2/v3, ...): give a
hub id or a local ``save_pretrained`` folder as ``model``.

Choices, and why:

* Special tokens are left out of the mean (``skip_special=True``) because the community features
  leave them out, and [CLS]/[SEP] carry sentence-level pre-training signals unlike any word's.
  They are found with the tokenizer's ``special_tokens_mask``, so this holds for every tokenizer,
  not only those with exactly one token at each end. A text with no other token falls back to
  all its tokens.
* Batches are padded; the attention mask keeps padding out of attention and of the mean, so a
  batch gives the same vectors as one-by-one runs (to float tolerance).

Departures from the community features: they average sub-word vectors into words first and then
average words (a long word weighs as much as a short one); we average sub-word tokens directly,
which needs no word alignment and works with any tokenizer. Texts longer than ``max_length``
tokens are truncated (the community script would fail on them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from imer.extractors.base import register_extractor
from imer.extractors.hf import (
    HFExtractor,
    check_choice,
    check_layers,
    check_positive,
    embed_transcripts,
    parse_layers,
    runtime_field,
)
from imer.types import Modality, StreamStatus


@dataclass(frozen=True)
class DebertaConfig:
    """Which checkpoint, which layers, how to pool. Paths and devices are not config."""

    model: str = "microsoft/deberta-large"  # the community deberta-large-4-UTT model (v1, 1024-d)
    layers: tuple[int, ...] = (-4, -3, -2, -1)  # hidden-state indices (0 = embeddings)
    layer_pool: str = "sum"  # community deberta-large-4-UTT sums the last 4 layers
    skip_special: bool = True  # leave [CLS]/[SEP] out of the token mean, as the community features do
    max_length: int = 512  # tokens; longer texts are truncated (DeBERTa's position range)
    batch_size: int = runtime_field(32)  # texts per forward pass
    fp16: bool = True  # autocast to fp16 on CUDA only; ignored on CPU

    def __post_init__(self) -> None:
        what = "deberta"
        object.__setattr__(self, "layers", parse_layers(self.layers, what))
        check_choice(self.layer_pool, ("mean", "sum"), "layer_pool", what)
        check_positive(self.max_length, "max_length", what)
        check_positive(self.batch_size, "batch_size", what)


@register_extractor("deberta")
class DebertaExtractor(HFExtractor):
    """Sum of DeBERTa's last 4 layers, mean over the words' tokens (ComP's text features)."""

    modality = Modality.TEXT
    config_class = DebertaConfig
    description = "DeBERTa-large, sum of last 4 layers, mean over tokens (1024-d, as ComP); needs the model"
    known_dims = {"microsoft/deberta-large": 1024, "microsoft/deberta-v3-large": 1024, "microsoft/deberta-base": 768}
    offline_hint = "or use the offline text backend 'minilm'"

    def load(self) -> None:
        if self._loaded:  # the model itself is cached by _load_model, even if a check below failed
            return
        self._tokenizer = self._load("AutoTokenizer")
        self._load_model()
        check_layers(self.config.layers, self._n_hidden_states(), "deberta")
        self._loaded = True

    def extract(self, inputs: Sequence[str | None]) -> list[np.ndarray | StreamStatus]:
        """One [dim] float32 vector per transcript; empty ones are StreamStatus.missing(EMPTY_TRANSCRIPT)."""
        if not inputs:  # nothing to do: do not load a model for it
            return []
        self.ensure_loaded()
        return embed_transcripts(self, self._tokenizer, inputs, layers=self.config.layers, layer_pool=self.config.layer_pool,
                                 skip_special=self.config.skip_special, normalize=False)
