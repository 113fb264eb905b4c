"""Recovery by distillation: train the pruned network to reproduce the dense network's outputs.

A :class:`fxmeta.training.loop.Objective`: the loss is the KL divergence from the teacher's
(the unpruned network's) softened output distribution to the student's, ``T**2 * KL(p_T || q_T)``
per row (Hinton et al. 2015), over classes for a classifier and over the vocabulary at every
position for a language model (Minitron's and Sheared-LLaMA's recovery). The labels are not
used; ``ce_weight`` adds the plain cross-entropy when asked.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _WithTeacher(nn.Module):
    """The student and a frozen teacher on the same batch (one module, so DDP sees the student's
    parameters only: the teacher's need no gradient)."""

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher

    def train(self, mode: bool = True) -> _WithTeacher:
        self.student.train(mode)
        self.teacher.eval()  # never dropout or batch statistics in the teacher
        self.training = mode
        return self

    def forward(self, x: Any) -> tuple[Any, Any]:
        with torch.no_grad():
            target = self.teacher(x)
        return self.student(x), target


class DistillObjective:
    """``T**2 * KL(teacher || student)`` at temperature ``temperature`` (+ ``ce_weight`` x CE)."""

    def __init__(self, teacher: nn.Module, temperature: float = 1.0, ce_weight: float = 0.0) -> None:
        self.teacher = copy.deepcopy(teacher).eval()  # the caller's model stays where and as it is
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature = float(temperature)
        self.ce_weight = float(ce_weight)

    def wrap(self, model: nn.Module) -> nn.Module:
        return _WithTeacher(model, self.teacher)

    def begin_epoch(self, epoch: int) -> None:
        pass

    def before_step(self, step: int) -> None:
        pass

    def loss(self, out: Any, y: Tensor, criterion: nn.Module) -> tuple[Tensor, Any]:
        from .loop import flat_logits

        student, teacher = out
        s, target = flat_logits(student, y)
        t, _ = flat_logits(teacher, y)
        temp = self.temperature
        kl = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True,
                      reduction="batchmean") * temp ** 2
        if self.ce_weight:
            kl = kl + self.ce_weight * criterion(s, target)
        return kl, student
