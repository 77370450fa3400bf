"""imer: incomplete multimodal emotion recognition.

Importing :mod:`imer` is cheap: heavy libraries (torch, transformers, opensmile,
facenet-pytorch) are imported inside the modules that need them.
"""

__version__ = "0.1.0"
