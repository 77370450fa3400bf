"""``TrainConfig``: optimisation and protocol settings of one run (torch-free, so the CLI can read
its defaults without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from imer.errors import BadInput
from imer.fusion.missing import MISSING_RATES, MissingProtocol


# The learning rate of a method that declares none (concat). Not the official ComP 1e-4: at 1e-4
# with 32 dialogues a batch (about 4 steps an epoch on IEMOCAP) the best epochs sat at the very
# end of both stages (under-trained).
DEFAULT_LR = 1e-3


def resolve_lr(run_lr: float | None, declared_lr: float | None) -> float:
    """The run's learning rate if given, else the method's declared one, else ``DEFAULT_LR``."""
    for lr in (run_lr, declared_lr):
        if lr is not None:
            return float(lr)
    return DEFAULT_LR


@dataclass
class TrainConfig:
    epochs: int = 100  # total over all stages, split by the method's stage_fractions
    # None: the method's declared rate (OptimizerSpec.lr), else DEFAULT_LR. See trainer.learning_rate.
    lr: float | None = None
    weight_decay: float = 1e-5  # official ComP command (Adam L2)
    schedule: Literal["constant", "cosine"] = "constant"  # cosine: per stage, down to 1 % of lr
    # Selection scores (and the bundle keeps) an exponential moving average of the weights with
    # this half-life in epochs; 0 = the raw weights of the best epoch. See trainer.WeightAverage.
    ema_half_life: float = 0.0
    batch_size: int | None = None  # default: 256 utterances, or 32 dialogues holding at least ~256 utterances
    batch_mode: Literal["dialogue", "utterance"] | None = None  # default: the method's
    patience: int | None = 30  # epochs without improvement before a stage stops; None = never
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA (fp16 + scaler where bf16 is unsupported); off on CPU
    # Protocol: a rate, a fixed condition, or (neither given) every training utterance under a
    # rate drawn from mixed_rates, validation on the same mixture: a model for predict must
    # cope with any pattern. The paper protocols are one flag away (--missing-rate, --condition).
    missing_rate: float | None = None
    condition: str | None = None
    mixed_rates: tuple[float, ...] = MISSING_RATES
    val_fraction: float = 0.1  # share of training speakers / dialogues held out when the data has no valid split
    val_by: Literal["auto", "speakers", "dialogues"] = "auto"  # auto: speakers when they partition the dialogues
    selection: Literal["valid", "test"] = "valid"  # "test": the official protocol, optimistic
    grad_clip: float | None = 5.0
    min_stage_epochs: int = 1
    bucket: bool = True  # dialogue batches of similar length (less padding); False = fully random batches
    compile: bool = False  # torch.compile the method (CUDA: fewer kernel launches per step)
    compile_backend: str = "inductor"  # torch.compile backend ("eager" checks the path without compiling)

    def protocol(self) -> MissingProtocol:
        if self.condition is not None:
            return MissingProtocol(condition=self.condition)
        if self.missing_rate is not None:
            return MissingProtocol(missing_rate=float(self.missing_rate))
        return MissingProtocol(mixture=tuple(float(r) for r in self.mixed_rates))

    def validate(self) -> None:
        if self.selection not in ("valid", "test"):
            raise BadInput(f"selection {self.selection!r}: use 'valid' or 'test'")
        if self.batch_mode not in (None, "dialogue", "utterance"):
            raise BadInput(f"batch mode {self.batch_mode!r}: use 'dialogue' or 'utterance'")
        if self.schedule not in ("constant", "cosine"):
            raise BadInput(f"schedule {self.schedule!r}: use 'constant' or 'cosine'")
        if self.epochs < 1:
            raise BadInput("epochs must be at least 1")
        if not self.ema_half_life >= 0:
            raise BadInput(f"ema_half_life {self.ema_half_life}: must be >= 0 (epochs; 0 = off)")
        if self.lr is not None and not self.lr >= 0:
            raise BadInput(f"lr {self.lr}: must be >= 0")
        if self.missing_rate is not None and self.condition is not None:
            raise BadInput("give a missing rate or a condition, not both")
        self.protocol()
