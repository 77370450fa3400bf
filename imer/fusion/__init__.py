"""Fusion core: datasets, missing protocols, metrics, methods, trainer, bundles."""
