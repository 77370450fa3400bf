"""Feature extraction: decoded media -> one feature vector (or a missing status) per utterance and modality.

* :mod:`imer.extractors.base` — the :class:`Extractor` contract and registry (``spec``/``from_spec``).
* :mod:`imer.extractors.backends` — one module per registered backend (egemaps, wav2vec2, minilm,
  deberta, faceprint, manet); importing it loads no heavy library.
* :mod:`imer.extractors.run` — batched, cached extraction over many utterances.
* :mod:`imer.extractors.cache` — the content-keyed, resumable cache.
* :mod:`imer.extractors.faces` — MTCNN face detection shared by the face backends; :mod:`imer.extractors.hf`
  — what the Hugging Face backends share.

Extraction never decides labels, tasks or splits (that is :mod:`imer.store`) and never imports
:mod:`imer.fusion`.
"""
