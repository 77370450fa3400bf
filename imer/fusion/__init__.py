"""Fusion: from a :class:`~imer.store.FeatureSet` to trained models and their results.

* :mod:`imer.fusion.data` — :class:`Normalizer`, :class:`TensorData`, :class:`Batch`.
* :mod:`imer.fusion.missing` — missing-modality protocols (GCNet rates, fixed conditions).
* :mod:`imer.fusion.base` — the method contract and registry; :mod:`imer.fusion.methods` — one file per method.
* :mod:`imer.fusion.trainer` — the one training loop (``fit`` on ready train/selection sets);
  :mod:`imer.fusion.train_config` — its settings.
* :mod:`imer.fusion.evaluation` — inference (``predict_outputs``) and the results table.
* :mod:`imer.fusion.experiment` — splitting, normalising, seeding, training, bundling, cross-validation.
* :mod:`imer.fusion.bundle` — the model bundle on disk (:class:`BundleSpec`).
* :mod:`imer.fusion.metrics`, :mod:`imer.fusion.layers` — metrics of the field; shared blocks.
"""
