"""From what a user points at to decoded inputs: the only package that reads media.

* :mod:`imer.pipeline.ingest` — folders, files and manifests -> :class:`Utterance` s; decoding
  one utterance's streams (:func:`load_inputs`) with a :class:`StreamStatus` per modality.
* :mod:`imer.pipeline.manifest` — the :class:`Utterance` record.
* :mod:`imer.pipeline.media` — PyAV probing, audio decoding and frame sampling.
* :mod:`imer.pipeline.transcripts` — sidecar transcripts (txt, srt, vtt, json).
* :mod:`imer.pipeline.streams` — the rules that decide a stream is missing, and why.
* :mod:`imer.pipeline.decode` — the decode settings (part of every feature spec).

It imports nothing from extraction, the store or fusion.
"""
