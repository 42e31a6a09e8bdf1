"""A tiny multimodal model for the demo and tools/train_example.py: it shows how batches from
``make_loader`` feed a model, not how to build a good one.

Text tokens are embedded; the image (a small conv stack) and the audio (a strided 1-D conv)
are pooled into one context vector each, added to every token where the sample has that
modality (``has_image``/``has_audio``), and a linear head predicts the next token.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinyMultimodalModel", "lm_loss", "train_step"]


class TinyMultimodalModel(nn.Module):
    def __init__(self, vocab_size: int, dim: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.vision = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=4),
            nn.GELU(),
            nn.Conv2d(16, dim, 3, stride=2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.audio = nn.Sequential(
            nn.Conv1d(1, 16, 64, stride=32),
            nn.GELU(),
            nn.Conv1d(16, dim, 8, stride=4),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
        )
        self.mix = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, batch: dict) -> torch.Tensor:
        x = self.embed(batch["input_ids"])
        img = self.vision(batch["pixel_values"]) * batch["has_image"].float()[:, None]
        aud = self.audio(batch["audio"][:, None, :]) * batch["has_audio"].float()[:, None]
        x = x + (img + aud)[:, None, :]
        h, _ = self.mix(x)
        return self.head(h)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy; padding (labels == -100) is ignored."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
    )


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict) -> float:
    """One optimisation step (works for a plain or a DDP-wrapped model); returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = lm_loss(model(batch), batch["labels"])
    loss.backward()
    optimizer.step()
    return float(loss.detach())
