"""CIFAR-10 ResNet-18 and Ghost-ResNet-18: one network, two conv factories.

Follows torchvision's resnet.py, reshaped for 32x32 inputs (3x3 stem, no max-pool). What varies
between the study's models is injected: the activation as a module factory, and the 3x3 conv
inside each BasicBlock as a conv factory. The Ghost model is the ResNet built with
`GhostModule` as that factory. The initial weights are drawn by an initialisation chosen by name
(`INITS`) once the network is built. Models return logits.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import nn

ActivationFactory = Callable[[], nn.Module]
# conv factory: (in_channels, out_channels, stride) -> module mapping x to out_channels maps
ConvFactory = Callable[[int, int, int], nn.Module]

ACTIVATIONS: dict[str, ActivationFactory] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "silu": lambda: nn.SiLU(inplace=True),
}


def conv3x3(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    return nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)


class GhostModule(nn.Module):
    """GhostNet's module (Han et al., 2020): a primary conv makes ceil(out/ratio) maps, a cheap
    depthwise conv makes the rest from them; concatenated, then sliced to `out_channels`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        activation: ActivationFactory,
        ratio: int = 2,
        kernel_size: int = 3,
        dw_size: int = 3,
    ):
        super().__init__()
        self.out_channels = out_channels
        primary = math.ceil(out_channels / ratio)
        cheap = primary * (ratio - 1)
        self.primary_conv = nn.Sequential(
            nn.Conv2d(in_channels, primary, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(primary),
            activation(),
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(primary, cheap, dw_size, 1, dw_size // 2, groups=primary, bias=False),
            nn.BatchNorm2d(cheap),
            activation(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        return torch.cat([x1, x2], dim=1)[:, : self.out_channels]


class BasicBlock(nn.Module):
    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int,
        conv: ConvFactory,
        activation: ActivationFactory,
    ):
        super().__init__()
        self.conv1 = conv(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = activation()
        self.conv2 = conv(channels, channels, 1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act2 = activation()  # the reference applies ReLU after the residual sum too
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(
        self,
        layers: list[int],
        block_conv: ConvFactory,
        activation: ActivationFactory,
        num_classes: int = 10,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 3, 1, padding=1, bias=False), nn.BatchNorm2d(64), activation()
        )
        stages, in_channels = [], 64
        for i, (channels, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            for b in range(blocks):
                stride = 2 if i > 0 and b == 0 else 1
                stages.append(BasicBlock(in_channels, channels, stride, block_conv, activation))
                in_channels = channels
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.layers(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def resnet18(activation: str, num_classes: int = 10) -> ResNet:
    return ResNet([2, 2, 2, 2], conv3x3, ACTIVATIONS[activation], num_classes)


def ghost_resnet18(activation: str, num_classes: int = 10) -> ResNet:
    act = ACTIVATIONS[activation]
    ghost = functools.partial(GhostModule, activation=act, ratio=2, kernel_size=3, dw_size=3)
    return ResNet([2, 2, 2, 2], ghost, act, num_classes)


MODELS: dict[str, Callable[..., ResNet]] = {
    "resnet18": resnet18,
    "ghost_resnet18": ghost_resnet18,
}


def torch_default(model: nn.Module) -> None:
    """Each layer as torch makes it (its own reset_parameters): the study's initialisation."""


def kaiming(model: nn.Module) -> None:
    """torchvision's ResNet initialisation of its convs: Kaiming-normal, fan-out, ReLU gain."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


# An initialisation redraws a built model's weights in place, from torch's seeded generator.
INITS: dict[str, Callable[[nn.Module], None]] = {
    "torch-default": torch_default,
    "kaiming": kaiming,
}


def build_model(name: str, activation: str, num_classes: int = 10,
                init: str = "torch-default") -> ResNet:  # fmt: skip
    """The network `name` with `activation`, its weights drawn as the initialisation `init`
    says; an unknown name of any of them raises ValueError."""
    model = MODELS[registered(MODELS, name, "model")](
        registered(ACTIVATIONS, activation, "activation"), num_classes
    )
    INITS[registered(INITS, init, "init")](model)
    return model


def registered(registry: dict, name: str, what: str) -> str:
    """`name` if `registry` holds it; else a ValueError naming the choices (a TrainConfig checks
    its names first, with the user's words: this guards the code that skips it)."""
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}: one of {', '.join(registry)}")
    return name


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Normalized(nn.Module):
    """Wraps a network so it takes RGB images as floats in [0, 1] (N, 3, H, W): the form a
    consumer of a logged or exported model has, without knowing CIFAR-10's statistics."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)
