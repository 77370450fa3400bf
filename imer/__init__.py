"""imer: incomplete multimodal emotion recognition.

Importing :mod:`imer` is cheap: heavy libraries (torch, transformers, opensmile,
facenet-pytorch) are imported inside the modules that need them.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``from imer import Predictor`` without importing torch at ``import imer``."""
    if name in ("Predictor", "Prediction"):
        from imer import predict as _predict

        return getattr(_predict, name)
    raise AttributeError(f"module 'imer' has no attribute {name!r}")
