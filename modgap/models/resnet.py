"""ResNet-18 encoders for spectrograms, video frames and images, written from scratch (no torchvision).

The network is torchvision's ``resnet18`` without its ``fc`` layer: BasicBlocks in stages [2, 2, 2, 2]
of widths w, 2w, 4w, 8w (w = ``model.width``, 64 is the standard network), a conv7x7/2 + BN + ReLU +
maxpool3x3/2 stem, global average pooling, and torchvision's initialisation (Kaiming-normal fan-out
convolutions, BN weight 1 and bias 0, optionally the last BN of each block zeroed). At w = 64 with
3 input channels it has 11,176,512 parameters, like torchvision's resnet18 minus its 513,000-parameter
classifier, and the same state_dict key names (``conv1``, ``bn1``, ``layer1.0.conv1``, ...), so an encoder
loads a torchvision resnet18 state_dict (its ``fc`` entries are ignored) where the channels agree.

Registered encoders (inputs as the datasets' batches deliver them):

``resnet18_audio``   (B, F, T) spectrogram -> one input channel -> (B, 8w)
``resnet18_frames``  (B, T, C, H, W) frames -> each frame through the 2-D ResNet -> mean over T -> (B, 8w)
``resnet18_image``   (B, C, H, W) -> (B, 8w)

All of them work with ``torch.channels_last`` inputs and modules (nothing calls ``.view``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from .encoders import ENCODERS

__all__ = ["BasicBlock", "ResNet", "resnet18", "ResNet18Audio", "ResNet18Frames", "ResNet18Image"]


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BN, and a shortcut (1x1 conv + BN where the shape changes)."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet of BasicBlocks without a classifier: (N, C, H, W) -> (N, 8 * width) after global pooling."""

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 64,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if in_channels < 1 or width < 1:
            raise ConfigError(f"a ResNet needs at least one input channel and width >= 1 (got {in_channels}, {width})")
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = width
        for i, blocks in enumerate(layers):
            cout = width * 2**i
            stage = [BasicBlock(cin, cout, stride=1 if i == 0 else 2)]
            stage += [BasicBlock(cout, cout) for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            cin = cout
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature maps, (N, 8w, H/32, W/32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.forward_maps(x)).flatten(1)


def resnet18(in_channels: int = 3, width: int = 64, zero_init_residual: bool = False) -> ResNet:
    return ResNet(in_channels, width, (2, 2, 2, 2), zero_init_residual)


def _check_rank(input_shape: tuple[int, ...], rank: int, encoder: str, expected: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != rank or min(shape, default=0) < 1:
        raise ConfigError(
            f"encoder '{encoder}' expects inputs of shape {expected} per sample, "
            f"got {shape}; choose another with model.encoders"
        )
    return shape


class ResNet18Audio(ResNet):
    """ResNet-18 on a (F, T) spectrogram seen as a one-channel image."""

    def __init__(self, width: int = 64, zero_init_residual: bool = False) -> None:
        super().__init__(1, width, (2, 2, 2, 2), zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F, T)
        return super().forward(x.unsqueeze(1))


class ResNet18Frames(ResNet):
    """ResNet-18 per frame, the frames folded into the batch, features averaged over time."""

    def __init__(self, in_channels: int = 3, width: int = 64, zero_init_residual: bool = False) -> None:
        super().__init__(in_channels, width, (2, 2, 2, 2), zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C, H, W)
        b, t = x.shape[:2]
        features = super().forward(x.reshape(b * t, *x.shape[2:]))
        return features.reshape(b, t, -1).mean(1)


class ResNet18Image(ResNet):
    """ResNet-18 on (C, H, W) images."""

    def __init__(self, in_channels: int = 3, width: int = 64, zero_init_residual: bool = False) -> None:
        super().__init__(in_channels, width, (2, 2, 2, 2), zero_init_residual)


@ENCODERS.register("resnet18_audio")
def resnet18_audio(input_shape: tuple[int, ...], cfg: ModelConfig) -> nn.Module:
    """ResNet-18 on a (F, T) spectrogram, 1 input channel; features 8 * model.width."""
    _check_rank(input_shape, 2, "resnet18_audio", "(F, T)")
    return ResNet18Audio(cfg.width)


@ENCODERS.register("resnet18_frames")
def resnet18_frames(input_shape: tuple[int, ...], cfg: ModelConfig) -> nn.Module:
    """ResNet-18 per frame of (T, C, H, W) clips, mean over frames; features 8 * model.width."""
    shape = _check_rank(input_shape, 4, "resnet18_frames", "(T, C, H, W)")
    return ResNet18Frames(shape[1], cfg.width)


@ENCODERS.register("resnet18_image")
def resnet18_image(input_shape: tuple[int, ...], cfg: ModelConfig) -> nn.Module:
    """ResNet-18 on (C, H, W) images; features 8 * model.width."""
    shape = _check_rank(input_shape, 3, "resnet18_image", "(C, H, W)")
    return ResNet18Image(shape[0], cfg.width)
