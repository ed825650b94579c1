"""CIFAR-10 training written the usual way: the baseline the engine is measured against.

A torchvision-style Dataset hands out one PIL image per item; `RandomCrop(32, padding=4)`,
`RandomHorizontalFlip`, `ToTensor` and `Normalize` run per image, in `DataLoader` workers; the
loop trains in fp32 on a model in the default memory format and reads `loss.item()` every step.
The images are the same decoded uint8 arrays the engine trains on, so only the input pipeline
and the loop differ.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cifar_mlflow.core.data import MEAN, STD, Split


class PilCifar(Dataset):
    """What torchvision's `CIFAR10` does per item: HWC uint8 -> PIL image -> transform."""

    def __init__(self, split: Split, transform: transforms.Compose):
        self.images = np.ascontiguousarray(split.images.transpose(0, 2, 3, 1))
        self.labels = split.labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def train_loader(split: Split, batch_size: int, workers: int, seed: int) -> DataLoader:
    augment = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        PilCifar(split, augment),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        generator=generator,
    )


def test_loader(split: Split, batch_size: int, workers: int) -> DataLoader:
    plain = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    return DataLoader(PilCifar(split, plain), batch_size=batch_size, num_workers=workers)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
) -> float:
    images, labels = images.to(device), labels.to(device)
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def train_epoch(model, optimizer, loader: DataLoader, device: torch.device) -> float:
    """One epoch; the mean training loss."""
    model.train()
    losses = [train_step(model, optimizer, x, y, device) for x, y in loader]
    return float(np.mean(losses))


def accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in loader:
            predicted = model(images.to(device)).argmax(1).cpu()
            correct += (predicted == labels).sum().item()
    return correct / len(loader.dataset)
