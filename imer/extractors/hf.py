"""Shared Hugging Face plumbing for the transformer backends (``wav2vec2``, ``deberta``, ``minilm``).

Each backend file keeps its own choices (which layers, which pooling, chunking); what they share
lives here:

* **Loading** (:func:`load_pretrained`): ``model`` is a hub id or a local folder written by
  ``save_pretrained``. A folder is loaded with ``local_files_only=True``; an id goes through the
  normal cache. When neither works (id not cached and the hub unreachable, or ``HF_HUB_OFFLINE=1``)
  transformers raises ``OSError``; we turn it into :class:`~imer.errors.BadInput` that names the
  model and says what to do (a local folder, a run with network access once, or an offline backend).
* **Layers and pooling**: :func:`combine_layers` picks hidden states by index (``0`` is the
  input of the first transformer layer, i.e. the embeddings; ``-1`` is always the model's output,
  ``last_hidden_state``, in every transformers version) and sums or averages them;
  :func:`masked_mean` / :func:`masked_sum` pool only over valid frames/tokens.
* **Batching**: :func:`length_sorted_batches` groups inputs of similar length (less padding);
  callers write results back by index, so the output order is the input order.
* **Device and precision** (:class:`HFExtractor`): the model is moved to ``self.device`` once;
  inference runs under ``torch.inference_mode``; fp16 autocast is used only on CUDA (CPU fp16 is
  slow and inaccurate), and pooling is always done in fp32.
* **Identity**: ``batch_size`` is a :func:`~imer.extractors.base.runtime_field`: it changes speed,
  not values, so :meth:`Extractor.key` and :meth:`Extractor.describe` leave it out. Changing the
  batch size therefore neither re-extracts nor makes a bundle refuse its own features.

Heavy libraries (torch, transformers) are imported inside functions, never at module import.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np

from imer.errors import BadInput
from imer.extractors.base import Extractor, identity_config, require, resolve_device, runtime_field  # noqa: F401  (re-exported)

def check_layers(layers: Sequence[int], n_hidden_states: int, what: str) -> None:
    """Every index must address one of the model's hidden states (0 = embeddings, -1 = last)."""
    bad = [i for i in layers if not -n_hidden_states <= i < n_hidden_states]
    if bad:
        raise BadInput(
            f"{what}: layers {list(bad)} out of range: the model has {n_hidden_states} hidden states "
            f"(indices 0..{n_hidden_states - 1} or -{n_hidden_states}..-1; 0 is the embedding output)"
        )


def parse_layers(layers: Any, what: str) -> tuple[int, ...]:
    """Accept a tuple/list of ints (lists come back from JSON); refuse anything else early."""
    if isinstance(layers, int):
        layers = (layers,)
    try:
        out = tuple(int(i) for i in layers)
    except (TypeError, ValueError):
        raise BadInput(
            f"{what}: layers must be a list of hidden-state indices, e.g. [-4, -3, -2, -1]; got {layers!r}"
        ) from None
    if not out:
        raise BadInput(f"{what}: layers must name at least one hidden state, e.g. [-1]")
    return out


def check_choice(value: Any, choices: Sequence[str], option: str, what: str) -> None:
    if value not in choices:
        raise BadInput(f"{what}: {option}={value!r}; choose one of {list(choices)}")


def check_positive(value: Any, option: str, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadInput(f"{what}: {option} must be a positive integer; got {value!r}")


# ---------------------------------------------------------------------- loading
def resolve_source(model: str, what: str) -> tuple[str, bool]:
    """(what to pass to ``from_pretrained``, whether it is a local folder).

    A string that looks like a path (absolute, ``./``, ``~``, or more than one ``/``) but is not a
    folder is refused here: transformers would report it as a malformed hub id.
    """
    path = os.path.expanduser(str(model))
    if os.path.isdir(path):
        return path, True
    looks_like_path = path.startswith(("/", ".", "~")) or path.count("/") > 1 or (os.sep != "/" and os.sep in path)
    if looks_like_path:
        raise BadInput(f"{what}: model folder {model!r} not found; give a folder written by save_pretrained or a hub id")
    return str(model), False


def load_pretrained(auto_class: str, model: str, what: str, offline_hint: str = "", **kwargs: Any) -> Any:
    """``transformers.<auto_class>.from_pretrained(model)`` with an actionable error.

    Args:
        auto_class: ``"AutoModel"``, ``"AutoTokenizer"``, ``"AutoFeatureExtractor"``, ``"AutoConfig"``.
        model: hub id or local folder.
        what: the backend's name, for messages.
        offline_hint: e.g. ``"or use the offline text backend 'minilm'"``.
    """
    transformers = require("transformers", "transformers", f"the {what} backend")
    src, local = resolve_source(model, what)
    cls = getattr(transformers, auto_class)
    if local:
        kwargs = {**kwargs, "local_files_only": True}
    tlog = transformers.utils.logging
    bar = tlog.is_progress_bar_enabled()
    tlog.disable_progress_bar()  # the library does not draw; "Loading weights" bars would interleave ours
    try:
        return cls.from_pretrained(src, **kwargs)
    except ValueError as e:  # e.g. no tokenizer files, or a model type transformers does not know
        if local:
            part = _PART.get(auto_class, auto_class)
            raise BadInput(f"{what}: folder {src!r} has no loadable {part} ({_first_line(e)})") from None
        raise BadInput(f"{what}: {model!r} cannot be loaded with {auto_class} ({_first_line(e)})") from None
    except OSError as e:
        first = _first_line(e)
        part = _PART.get(auto_class, auto_class)
        if local:
            raise BadInput(f"{what}: folder {src!r} has no loadable {part} ({first})") from None
        hint = f"; {offline_hint}" if offline_hint else ""
        if _hub_offline():
            raise BadInput(
                f"{what}: cannot load the {part} of {model!r}: it is not a local folder, not in the Hugging Face "
                f"cache, and the hub is switched off (HF_HUB_OFFLINE=1). Pass model=<folder> (a copy saved with "
                f"save_pretrained), or run once with network access to cache it{hint}"
            ) from None
        raise BadInput(
            f"{what}: cannot load the {part} of {model!r} ({first}). Check the model id, or pass "
            f"model=<folder> (a copy saved with save_pretrained){hint}"
        ) from None
    finally:
        if bar:
            tlog.enable_progress_bar()


_PART = {"AutoModel": "model", "AutoTokenizer": "tokenizer", "AutoFeatureExtractor": "feature extractor", "AutoConfig": "config"}


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() not in ("", "0", "false", "no", "off")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---------------------------------------------------------------------- layers and pooling
def combine_layers(output: Any, layers: Sequence[int], how: str) -> Any:
    """[B, T, D] fp32: the chosen hidden states of a model ``output``, summed or averaged.

    Index ``-1`` (and ``n - 1``) always means ``last_hidden_state``, the model's output after any
    final layer norm. transformers 4.x put exactly that last in ``hidden_states``; 5.x records the
    last layer's output *before* the final norm of pre-LN models (wav2vec2 large lv60, HuBERT and
    WavLM large). Substituting keeps a config's meaning the same under both.
    """
    if list(layers) == [-1]:  # the common case: no need to ask for every hidden state
        return output.last_hidden_state.float()
    states = list(output.hidden_states)
    states[-1] = output.last_hidden_state
    if len(layers) == 1:
        return states[layers[0]].float()
    import torch

    stacked = torch.stack([states[i].float() for i in layers], 0)  # (n_layers, B, T, D)
    return stacked.sum(0) if how == "sum" else stacked.mean(0)


def wants_hidden_states(layers: Sequence[int]) -> bool:
    """Whether ``output_hidden_states=True`` is needed (not for the last layer alone)."""
    return list(layers) != [-1]


def masked_sum(x: Any, mask: Any) -> tuple[Any, Any]:
    """Sum of ``x`` [B, T, D] over the positions where ``mask`` [B, T] is set, and their count [B]."""
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    return (x * m).sum(1), m.sum(1).squeeze(-1)


def masked_mean(x: Any, mask: Any) -> Any:
    """Mean of ``x`` [B, T, D] over valid positions -> [B, D] (the sentence-transformers formula)."""
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1e-9)


# ---------------------------------------------------------------------- batching
def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Index batches in ascending length order (stable), so each batch pads as little as possible."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    for s in range(0, len(order), batch_size):
        yield order[s : s + batch_size]


def equal_length_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Batches whose members all have the same length: for models that must never see padding."""
    lengths = np.asarray(lengths)
    for n in np.unique(lengths):
        idx = np.flatnonzero(lengths == n)
        for s in range(0, len(idx), batch_size):
            yield idx[s : s + batch_size]


def pad_1d(arrays: Sequence[np.ndarray], value: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad 1-D arrays to [B, max_len]; also return the true lengths [B]."""
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    out = np.full((len(arrays), int(lengths.max())), value, dtype=np.float32)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
    return out, lengths


# ---------------------------------------------------------------------- the base class
class HFExtractor(Extractor):
    """Base for backends built on a transformers ``AutoModel``: loading, device, fp16, identity.

    Subclasses set ``known_dims`` (hidden size of well-known checkpoints, so ``dim`` and
    ``describe()`` work before anything is downloaded) and ``offline_hint``, and implement
    ``load()`` by calling :meth:`_load_model` once.
    """

    known_dims: ClassVar[dict[str, int]] = {}
    offline_hint: ClassVar[str] = ""

    def __init__(self, config: Any | None = None, device: str = "cpu"):
        super().__init__(config, device)
        self._model: Any = None
        self._hf_config: Any = None

    # -- loading ------------------------------------------------------------------
    def _model_source(self) -> str:
        """What ``from_pretrained`` gets; a backend may map a short name to packaged weights."""
        return self.config.model

    def _load(self, auto_class: str, **kwargs: Any) -> Any:
        return load_pretrained(auto_class, self._model_source(), self.name, self.offline_hint, **kwargs)

    def _load_model(self) -> Any:
        """Load the encoder once, in eval mode, on ``self.device``."""
        if self._model is None:
            model = self._load("AutoModel")
            model.eval()
            self.torch_device = resolve_device(self.device)
            model.to(self.torch_device)
            self._model = model
            self._hf_config = model.config
        return self._model

    def _n_hidden_states(self) -> int:
        return int(self._hf_config.num_hidden_layers) + 1  # + the embedding output

    @property
    def dim(self) -> int:
        if self._hf_config is None:
            if self.config.model in self.known_dims:
                return self.known_dims[self.config.model]
            self._hf_config = self._load("AutoConfig")
        return int(self._hf_config.hidden_size)

    # -- running ------------------------------------------------------------------
    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        """inference_mode, plus fp16 autocast when asked for and on CUDA (never on CPU)."""
        import torch

        fp16 = bool(getattr(self.config, "fp16", False)) and str(self.torch_device).startswith("cuda")
        with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=torch.float16, enabled=fp16):
            yield


def embed_texts(
    ext: HFExtractor,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    layers: Sequence[int],
    layer_pool: str,
    skip_special: bool,
    normalize: bool,
) -> np.ndarray:
    """[N, D] float32 sentence vectors for non-empty ``texts``, in input order.

    Texts are batched in ascending character length (stable sort, ``ext.config.batch_size``) and
    truncated to ``ext.config.max_length`` tokens. Token vectors are the chosen layers combined by
    ``layer_pool``; the sentence vector is their mean over non-padding tokens, and also over
    non-special tokens when ``skip_special`` (a text whose every token is special falls back to
    all non-padding tokens). With ``normalize`` the result is L2-normalised.
    """
    import torch

    model = ext._model
    cfg = ext.config
    out = np.zeros((len(texts), ext.dim), np.float32)
    with ext._inference():
        for idx in length_sorted_batches([len(t) for t in texts], cfg.batch_size):
            enc = tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=cfg.max_length,
                return_tensors="pt",
                return_special_tokens_mask=skip_special,
            )
            special = enc.pop("special_tokens_mask", None)
            enc = enc.to(ext.torch_device)
            res = model(**enc, output_hidden_states=wants_hidden_states(layers))
            hidden = combine_layers(res, layers, layer_pool)  # (B, T, D)
            mask = enc["attention_mask"]  # (B, T)
            if skip_special:
                content = mask.bool() & ~special.to(mask.device).bool()
                empty = content.sum(1) == 0
                mask = torch.where(empty[:, None], mask.bool(), content)
            pooled = masked_mean(hidden, mask)  # (B, D)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[idx] = pooled.cpu().numpy()
    return out


def embed_transcripts(ext: "HFExtractor", tokenizer: Any, inputs: Sequence[str | None], **kwargs: Any) -> list:
    """``embed_texts`` over transcripts, with ``None`` -> NO_TRANSCRIPT and blank -> EMPTY_TRANSCRIPT."""
    from imer.types import MissingReason, StreamStatus

    out: list = [StreamStatus.missing(MissingReason.NO_TRANSCRIPT) if t is None else StreamStatus.missing(MissingReason.EMPTY_TRANSCRIPT) for t in inputs]
    keep = [i for i, t in enumerate(inputs) if t is not None and t.strip()]
    if keep:
        vecs = embed_texts(ext, tokenizer, [inputs[i].strip() for i in keep], **kwargs)
        for row, i in enumerate(keep):
            out[i] = vecs[row]
    return out
