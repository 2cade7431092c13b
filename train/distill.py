"""`DistillModule`: the student (TinyViT-5M or any of `mobilesam.variants.STUDENTS`) learns the teacher's stored
image embeddings (MobileSAM's recipe)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .base import SamModule


class DistillModule(SamModule):
    """Encoder distillation: the MSE (or MSE + cosine, `loss`) between the student's image embedding and the
    teacher's stored one.

    Args: those of `SamModule`.
    """

    def losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return self.distill_loss(self.student_embedding(batch), batch)
