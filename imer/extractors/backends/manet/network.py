"""MA-Net, the facial-expression network whose RAF-DB checkpoint produces the community ``manet`` features.

Zhao, Liu & Wang, "Learning Deep Global Multi-scale and Local Attention Features for Facial
Expression Recognition in the Wild", IEEE TIP 30, 2021. Official code: github.com/zengqunzhao/MA-Net.

Shape of the network (input 224x224):

* stem + ``layer1`` + ``layer2``: ResNet-18's (BasicBlock x2 each), shared; output [B, 128, 28, 28].
* local attention branch: the 28x28 map is cut into four 14x14 patches (top-left, top-right,
  bottom-left, bottom-right); each has its own ``layer3_1_p{k}`` (stride 2) and ``layer4_1_p{k}``
  (stride 1) of ``AttentionBlock`` s (a BasicBlock with CBAM before the residual add). The four
  [B, 512, 4, 4] outputs are tiled back to 8x8, average-pooled -> 512-d, then ``fc_1``.
* global multi-scale branch: ``layer3_2`` and ``layer4_2`` (both stride 2) of ``MulScaleBlock`` s
  (a 3x3 conv, then the channels split in four and run through two hierarchical 3x3 cascades,
  summed) -> [B, 512, 7, 7], pooled -> 512-d, then ``fc_2``.
* training loss: ``beta * CE(fc_1) + (1 - beta) * CE(fc_2)``, beta = 0.6 (official ``main.py``).

The embedding used for features is ``cat([local 512-d, global 512-d])`` (1024-d): the input of the
two classifiers, branch 1 first, as in the ``return_embedding=True`` variant of ``MANet`` that the
GCNet/MERTools ``extract_manet_embedding.py`` scripts call to make the community ``manet_UTT``
files (Resize 224 + ToTensor, ``module.`` stripped, mean over a video's faces).

Key layout (what makes the checkpoint load with strict matching): module and parameter names
follow the official ``model/manet.py`` (repository zengqunzhao/MA-Net) and its
``model/attention.py`` CBAM (read here from the verbatim copy in zeroQiaoba/MERTools
``feature_extraction/visual/manet/model/attention.py``: the standard CBAM code of Woo et al. 2018,
``cbam.ChannelGate.mlp.{1,3}`` Linear layers, ``cbam.SpatialGate.spatial.{conv,bn}``).
Checkpoints from the official training script are wrapped in DataParallel, so their keys start
with ``module.``; the loader strips it. ``expected_state_dict_keys`` lists every key and shape.

Two versions of ``MulScaleBlock`` exist, with identical names and shapes (both load strictly):

* the authors' first version, vendored by GCNet and MERTools, runs both cascades in forward order
  (``sp_x[0] -> sp_x[3]``). The RAF-DB checkpoint behind the community ``manet_UTT`` features was
  trained by GCNet with that code, and with random weights loaded into both this network matches it
  to float rounding: the default, ``reverse_second_cascade=False``.
* the authors' 2023 revision of ``model/manet.py`` runs the second cascade backwards
  (``sp_x[3] -> sp_x[0]``): ``reverse_second_cascade=True``. Given the same weights it changes the
  whole global half of the embedding (relative difference ~0.57 with random weights), so it is only
  for checkpoints trained with the revised file.

Departures: the four local patches are the quadrants of whatever ``layer2`` returns (the official
code hard-codes ``0:14`` / ``14:28``, i.e. 224-px input); at 224 the two are identical. ReLUs are
not in-place (the official BasicBlock's are; numerically the same).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EMBED_DIM = 1024  # 512 (local attention branch) + 512 (global multi-scale branch)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


# -- CBAM (Woo et al., ECCV 2018), in the module layout of MA-Net's attention.py ---------------------
class BasicConv(nn.Module):
    """Conv + optional BN + optional ReLU; only the spatial gate uses it (BN, no ReLU)."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, padding: int, relu: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=kernel_size, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_planes, eps=1e-5, momentum=0.01, affine=True)
        self.relu = nn.ReLU() if relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.relu(x) if self.relu is not None else x


class Flatten(nn.Module):
    """Index 0 of the channel gate's ``mlp`` (keeps the Linear layers at keys ``mlp.1`` / ``mlp.3``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.size(0), -1)


class ChannelGate(nn.Module):
    """Shared MLP over the avg- and max-pooled channel descriptors, summed, sigmoid."""

    def __init__(self, gate_channels: int, reduction_ratio: int = 16):
        super().__init__()
        hidden = gate_channels // reduction_ratio
        self.mlp = nn.Sequential(
            Flatten(), nn.Linear(gate_channels, hidden), nn.ReLU(), nn.Linear(hidden, gate_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))  # [B, C]
        return x * torch.sigmoid(att)[:, :, None, None]


class ChannelPool(nn.Module):
    """[max over channels, mean over channels] -> [B, 2, H, W] (this order, as in CBAM)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)


class SpatialGate(nn.Module):
    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.compress = ChannelPool()
        self.spatial = BasicConv(2, 1, kernel_size, padding=(kernel_size - 1) // 2, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.spatial(self.compress(x)))


class CBAM(nn.Module):
    def __init__(self, gate_channels: int, reduction_ratio: int = 16):
        super().__init__()
        self.ChannelGate = ChannelGate(gate_channels, reduction_ratio)
        self.SpatialGate = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


# -- residual blocks -------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """ResNet-18's block."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class AttentionBlock(BasicBlock):
    """BasicBlock with CBAM applied to the residual branch before the add (local branch)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__(inplanes, planes, stride, downsample)
        self.cbam = CBAM(planes, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.cbam(self.bn2(self.conv2(out)))
        return self.relu(out + identity)


class MulScaleBlock(nn.Module):
    """3x3 conv, then 4 channel groups through two Res2Net-style cascades, summed (global branch).

    Cascade 1 runs group 1 -> 4: ``y1 = f1(x1)``, ``yk = fk(relu(y_{k-1}) + xk)``; its receptive
    field grows with the group index. Cascade 2 has its own weights and runs 1 -> 4 as well (the
    code GCNet's checkpoint was trained with); ``reverse_second_cascade=True`` runs it 4 -> 1, as
    the authors' 2023 revision does.
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        reverse_second_cascade: bool = False,
    ):
        super().__init__()
        width = planes // 4
        self.scale_width = width
        self.reverse_second_cascade = reverse_second_cascade
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        # Attribute names are the checkpoint's: conv{cascade}_2_{group}, bn{cascade}_2_{group}.
        for cascade in (1, 2):
            for group in (1, 2, 3, 4):
                setattr(self, f"conv{cascade}_2_{group}", conv3x3(width, width))
                setattr(self, f"bn{cascade}_2_{group}", nn.BatchNorm2d(width))
        self.downsample = downsample

    def _step(self, cascade: int, group: int, x: torch.Tensor) -> torch.Tensor:
        conv = getattr(self, f"conv{cascade}_2_{group}")
        bn = getattr(self, f"bn{cascade}_2_{group}")
        return bn(conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        sp = torch.split(out, self.scale_width, dim=1)  # 4 x [B, C/4, H, W]

        ys1: list[torch.Tensor] = []
        for g in range(4):
            inp = sp[g] if g == 0 else self.relu(ys1[-1]) + sp[g]
            ys1.append(self._step(1, g + 1, inp))

        order = (3, 2, 1, 0) if self.reverse_second_cascade else (0, 1, 2, 3)
        ys2: dict[int, torch.Tensor] = {}
        prev: torch.Tensor | None = None
        for g in order:
            inp = sp[g] if prev is None else self.relu(prev) + sp[g]
            prev = ys2[g] = self._step(2, g + 1, inp)

        out = torch.cat(ys1, dim=1) + torch.cat([ys2[g] for g in range(4)], dim=1)
        return self.relu(out + identity)


# -- the network -----------------------------------------------------------------------------------
class MANet(nn.Module):
    """MA-Net (official ``manet()``: layers [2, 2, 2, 2]).

    ``reverse_second_cascade`` picks the ``MulScaleBlock`` version (see the module docstring);
    the default is the one behind the community features. ``forward`` returns the two branches' logits, as the official model does;
    ``embed`` returns the 1024-d ``[local, global]`` embedding before the classifiers.
    """

    def __init__(self, num_classes: int = 7, reverse_second_cascade: bool = False, layers=(2, 2, 2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _make_layer(BasicBlock, 64, 64, layers[0])
        self.layer2 = _make_layer(BasicBlock, 64, 128, layers[1], stride=2)
        # Local attention branch: one pair of stages per 14x14 patch.
        for p in (1, 2, 3, 4):
            setattr(self, f"layer3_1_p{p}", _make_layer(AttentionBlock, 128, 256, layers[2], stride=2))
            setattr(self, f"layer4_1_p{p}", _make_layer(AttentionBlock, 256, 512, layers[3], stride=1))
        # Global multi-scale branch.
        ms = {"reverse_second_cascade": reverse_second_cascade}
        self.layer3_2 = _make_layer(MulScaleBlock, 128, 256, layers[2], stride=2, **ms)
        self.layer4_2 = _make_layer(MulScaleBlock, 256, 512, layers[3], stride=2, **ms)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc_1 = nn.Linear(512, num_classes)
        self.fc_2 = nn.Linear(512, num_classes)

        for m in self.modules():  # the official initialisation (only matters without a checkpoint)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(local [B, 512], global [B, 512]) pooled features for images [B, 3, H, W] in [0, 1]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))  # [B, 128, H/8, W/8]: 28x28 at 224
        h, w = x.shape[2] // 2, x.shape[3] // 2
        patches = (x[:, :, :h, :w], x[:, :, :h, w:], x[:, :, h:, :w], x[:, :, h:, w:])
        outs = [
            getattr(self, f"layer4_1_p{k}")(getattr(self, f"layer3_1_p{k}")(patch))
            for k, patch in enumerate(patches, start=1)
        ]  # 4 x [B, 512, 4, 4] at 224
        local = torch.cat([torch.cat(outs[:2], dim=3), torch.cat(outs[2:], dim=3)], dim=2)  # [B, 512, 8, 8]
        local = torch.flatten(self.avgpool(local), 1)
        glob = self.layer4_2(self.layer3_2(x))  # [B, 512, 7, 7] at 224
        glob = torch.flatten(self.avgpool(glob), 1)
        return local, glob

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1024]: the community ``manet`` embedding (local branch first)."""
        return torch.cat(self.branches(x), dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        local, glob = self.branches(x)
        return self.fc_1(local), self.fc_2(glob)


def _make_layer(
    block: type[nn.Module], inplanes: int, planes: int, blocks: int, stride: int = 1, **kw
) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
    layers = [block(inplanes, planes, stride, downsample, **kw)]
    layers += [block(planes, planes, **kw) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def expected_state_dict_keys(num_classes: int = 7) -> dict[str, tuple[int, ...]]:
    """Every key of the official checkpoint's state dict (without ``module.``) -> tensor shape.

    Built from the module tree on the meta device (no memory, no init cost), so loaders can check a
    file before allocating the network; the test compares it with a table written out by hand.
    """
    with torch.device("meta"):
        model = MANet(num_classes=num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
