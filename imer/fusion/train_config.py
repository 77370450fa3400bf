"""``TrainConfig``: optimisation and protocol settings of one run (torch-free, so the CLI can read
its defaults without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from imer.errors import BadInput
from imer.fusion.missing import MissingProtocol


@dataclass
class TrainConfig:
    epochs: int = 100  # total over all stages, split by the method's stage_fractions
    lr: float = 1e-4  # official ComP command
    weight_decay: float = 1e-5  # official ComP command (Adam L2)
    batch_size: int | None = None  # default: 32 dialogues or 256 utterances
    batch_mode: Literal["dialogue", "utterance"] | None = None  # default: the method's
    patience: int | None = 30  # epochs without improvement before a stage stops; None = never
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA (fp16 + scaler where bf16 is unsupported); off on CPU
    missing_rate: float | None = 0.0
    condition: str | None = None
    val_fraction: float = 0.1
    selection: Literal["valid", "test"] = "valid"  # "test": the official protocol, optimistic
    grad_clip: float | None = 5.0
    min_stage_epochs: int = 1
    bucket: bool = True  # dialogue batches of similar length (less padding); False = fully random batches

    def protocol(self) -> MissingProtocol:
        if self.condition is not None:
            return MissingProtocol(condition=self.condition)
        return MissingProtocol(missing_rate=float(self.missing_rate or 0.0))

    def validate(self) -> None:
        if self.selection not in ("valid", "test"):
            raise BadInput(f"selection {self.selection!r}: use 'valid' or 'test'")
        if self.batch_mode not in (None, "dialogue", "utterance"):
            raise BadInput(f"batch mode {self.batch_mode!r}: use 'dialogue' or 'utterance'")
        if self.epochs < 1:
            raise BadInput("epochs must be at least 1")
        if self.missing_rate is not None and self.condition is not None and self.missing_rate > 0:
            raise BadInput("give a missing rate or a condition, not both")
        self.protocol()
