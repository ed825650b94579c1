"""The two study models: exact parameter counts, logits out, the activation, conv and
initialisation injected."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cifar_mlflow.core.config import ACTIVATION_NAMES, DEFAULTS, INIT_NAMES, MODEL_NAMES
from cifar_mlflow.core.models import (
    ACTIVATIONS,
    INITS,
    MODELS,
    GhostModule,
    build_model,
    count_parameters,
)

EXPECTED_PARAMETERS = {"resnet18": 11_173_962, "ghost_resnet18": 5_706_186}
ACTIVATION_TYPES = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
                    "silu": nn.SiLU}  # fmt: skip


def test_registry_covers_the_study_under_the_names_the_cli_offers():
    assert set(MODELS) == set(EXPECTED_PARAMETERS)
    assert set(ACTIVATIONS) == set(ACTIVATION_TYPES)
    # core.config spells the choices out so that `--help` needs no torch: the same, in order.
    assert (tuple(MODELS), tuple(ACTIVATIONS)) == (MODEL_NAMES, ACTIVATION_NAMES)
    assert tuple(INITS) == INIT_NAMES


def test_an_unknown_init_or_model_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown init 'xavier': one of torch-default, kaiming"):
        build_model("resnet18", "relu", init="xavier")
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg", "relu")


def conv_stds(model: nn.Module) -> list[tuple[float, nn.Conv2d]]:
    return [(m.weight.std().item(), m) for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_torch_default_is_the_default_and_kaiming_redraws_only_the_convs():
    assert DEFAULTS.init == "torch-default"
    torch.manual_seed(0)
    default = build_model("resnet18", "relu")
    torch.manual_seed(0)
    kaiming = build_model("resnet18", "relu", init="kaiming")
    # torch's own conv init: uniform with bound 1/sqrt(fan_in), so std 1/sqrt(3 fan_in);
    # torchvision's: normal with std sqrt(2 / fan_out). Each conv holds >= 1,728 weights.
    for (std, conv), (kaiming_std, _) in zip(conv_stds(default), conv_stds(kaiming)):
        fan_in = conv.in_channels // conv.groups * math.prod(conv.kernel_size)
        fan_out = conv.out_channels * math.prod(conv.kernel_size)
        assert std == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.1)
        assert kaiming_std == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)
    # Drawn from the same seed, the layers that are not convs are the same.
    assert torch.equal(default.fc.weight, kaiming.fc.weight)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_parameter_count_and_logits(name, activation):
    model = build_model(name, activation)
    assert count_parameters(model) == EXPECTED_PARAMETERS[name]
    logits = model.eval()(torch.randn(3, 3, 32, 32))
    assert logits.shape == (3, 10)
    # Logits, not probabilities (a softmax at the end would make every row sum to one).
    assert not torch.allclose(logits.sum(1), torch.ones(3), atol=1e-3)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_the_chosen_activation_is_the_only_one(name, activation):
    model = build_model(name, activation)
    used = {type(m) for m in model.modules() if type(m) in ACTIVATION_TYPES.values()}
    assert used == {ACTIVATION_TYPES[activation]}
    # stem + 2 per block (after conv1 and after the residual sum), 8 blocks; Ghost adds 2 per module.
    count = sum(isinstance(m, ACTIVATION_TYPES[activation]) for m in model.modules())
    assert count == (1 + 16 + (32 if name == "ghost_resnet18" else 0))


def test_ghost_replaces_every_block_3x3_conv():
    ghost, plain = build_model("ghost_resnet18", "relu"), build_model("resnet18", "relu")
    assert sum(isinstance(m, GhostModule) for m in ghost.modules()) == 16
    dense_3x3 = [
        m for m in ghost.layers.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.groups == 1
    ]  # fmt: skip
    plain_3x3 = [
        m for m in plain.layers.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    # Only the Ghost primary convs remain dense 3x3, each making half the output maps.
    assert len(dense_3x3) == len(plain_3x3) == 16
    assert [m.out_channels * 2 for m in dense_3x3] == [m.out_channels for m in plain_3x3]


def test_ghost_module_slices_to_odd_widths():
    module = GhostModule(8, 5, 1, ACTIVATIONS["relu"])
    assert module(torch.randn(2, 8, 6, 6)).shape == (2, 5, 6, 6)
