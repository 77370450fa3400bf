"""Device names: one rule for training, extraction and prediction.

:func:`check_device_name` validates the text of every ``--device`` option without importing
torch (the CLI's device type); :func:`resolve_device` turns it into a ``torch.device``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from imer.errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps."
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_name(name: str) -> str:
    """The device text, checked for form only; a clear error names the choices."""
    text = str(name).strip().lower()
    if not _DEVICE.match(text):
        raise BadInput(f"--device {name!r}: use {DEVICE_HELP}")
    return text


def resolve_device(name: "str | torch.device") -> "torch.device":
    """'auto' -> cuda when available, else cpu; a CUDA/MPS request without one is a clear error."""
    import torch

    if isinstance(name, torch.device):
        return name
    text = check_device_name(name)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BadInput(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if ":" in text and int(text.split(":")[1]) >= torch.cuda.device_count():
            raise BadInput(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if text == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise BadInput(f"--device {name}: MPS is not available on this machine; use --device cpu")
    return torch.device(text)


def autocast(device: "torch.device", enabled: bool):
    """(context, dtype): bf16 autocast on CUDA (fp16 where bf16 is unsupported); a no-op elsewhere."""
    import torch

    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype), dtype
    return torch.autocast(device.type, enabled=False), None
