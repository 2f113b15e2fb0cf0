"""Deep mutual learning: two students trained together, each also matching the other's predictions.

The peer lives inside this loss module, so fit() trains it with the same optimizer
and saves it in the same checkpoint. Both students are updated in each step
(the simultaneous variant of DML): each one's mimicry term treats the other's
prediction as a fixed target.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from slimkit.compress.distill.base import Distiller, kd_divergence, register_distiller
from slimkit.compress.distill.logit import check_kd_args
from slimkit.engine.evaluate import logits_of

__all__ = ["MutualLearning"]


@register_distiller("dml")
class MutualLearning(Distiller):
    """loss = CE(s) + alpha * T^2 * KL(peer || s) + CE(peer) + alpha * T^2 * KL(s || peer), targets detached."""

    def __init__(self, peer: nn.Module, temperature: float = 1.0, alpha: float = 1.0,
                 label_smoothing: float | None = None):
        super().__init__(label_smoothing)
        check_kd_args(temperature, 1.0)
        if alpha < 0:
            from slimkit.errors import BadInputError

            raise BadInputError(f"mutual-learning weight alpha must be >= 0, got {alpha}")
        self.temperature, self.alpha = float(temperature), float(alpha)
        self.peer = peer  # registered: trained, checkpointed and moved with this module

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        peer_logits = logits_of(self.peer(inputs)).float()
        student = self.hard_loss(logits, targets) + self.alpha * kd_divergence(
            logits, peer_logits.detach(), self.temperature)
        peer = self.hard_loss(peer_logits, targets) + self.alpha * kd_divergence(
            peer_logits, logits.detach(), self.temperature)
        correct = (peer_logits.argmax(1) == targets).float().mean()
        self.last_terms = {"student": float(student.detach()), "peer": float(peer.detach()),
                           "peer_accuracy": float(correct)}
        return student + peer
