"""A tiny CNN whose class signal lives in two known channels (importable as planted_models:planted_cnn)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

SIZE = 8
N_CHANNELS = 16


class PlantedCNN(nn.Module):
    """``features`` (8x8 conv → 16 channels, ReLU) → ``head`` (linear, 2 classes).

    Channels 0-1 detect a bright left half (class 1 = positive) and alone drive logit 1; channels 2-3 detect a bright
    right half at half the gain and drive logit 0 (weight 2); channels 4-15 respond to overall brightness (no class
    signal) and reach the head through small weights, so silencing them moves only borderline predictions.
    """

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(1, N_CHANNELS, SIZE), nn.ReLU())
        self.head = nn.Linear(N_CHANNELS, 2)
        with torch.no_grad():
            w = torch.zeros(N_CHANNELS, 1, SIZE, SIZE)
            left = torch.zeros(SIZE, SIZE)
            left[:, : SIZE // 2] = 1.0
            left[:, SIZE // 2 :] = -1.0
            w[0, 0], w[1, 0] = left, left * 1.1
            w[2, 0], w[3, 0] = -0.5 * left, -0.55 * left
            w[4:, 0] = 0.2 + 0.1 * torch.rand(N_CHANNELS - 4, SIZE, SIZE, generator=g)
            self.features[0].weight.copy_(w)
            self.features[0].bias.zero_()
            h = torch.zeros(2, N_CHANNELS)
            h[1, 0:2] = 1.0
            h[0, 2:4] = 2.0
            h[:, 4:] = 0.03 * torch.randn(2, N_CHANNELS - 4, generator=g)
            self.head.weight.copy_(h)
            self.head.bias.copy_(torch.tensor([0.5, 0.0]))  # a tie goes to class 0

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def planted_cnn() -> PlantedCNN:
    return PlantedCNN().eval()


def to_tensor(image) -> torch.Tensor:
    """A grayscale PIL image → ``[1, 8, 8]`` in [0, 1]."""
    a = np.asarray(image.convert("L").resize((SIZE, SIZE)), dtype=np.float32) / 255.0
    return torch.from_numpy(a).unsqueeze(0)


def images(n: int, seed: int):
    """``n`` images, half with a brighter left half (positive, label 1), contrast varying from tiny to strong."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out, positive = [], []
    for i in range(n):
        pos = i % 2 == 0
        contrast = rng.uniform(0.01, 0.5)
        a = np.full((SIZE, SIZE), 0.5) + rng.normal(0, 0.02, (SIZE, SIZE))
        a[:, : SIZE // 2] += contrast if pos else -contrast
        a[:, SIZE // 2 :] += -contrast if pos else contrast
        a *= rng.uniform(0.5, 1.0)  # overall brightness varies: drives channels 4-15
        out.append(Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8), mode="L"))
        positive.append(pos)
    return out, positive
