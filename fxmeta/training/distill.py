"""Recovery by distillation: train the pruned network to reproduce the dense network's outputs.

A :class:`fxmeta.training.loop.Objective`: the loss is the KL divergence from the teacher's
(the unpruned network's) softened output distribution to the student's, ``T**2 * KL(p_T || q_T)``
per row (Hinton et al. 2015), over classes for a classifier and over the vocabulary at every
position for a language model (Minitron's and Sheared-LLaMA's recovery). The labels are not
used; ``ce_weight`` adds the plain cross-entropy when asked.

``teacher_fits`` is the memory check behind ``fxmeta transform``'s default: the teacher is a
second copy of the model on the training device.
"""
from __future__ import annotations

import copy
import os
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


# The teacher may take this share of the training device's free memory: the rest is left to the
# student's training (its weights, gradients, optimizer state and activations).
TEACHER_SHARE = 0.25


def model_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers: what a copy of it holds."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def free_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` for this process, None when the platform does not say.

    CUDA: the device's free memory. CPU: the system's available memory (``MemAvailable``),
    shared by the processes of this machine under torchrun."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return available // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def teacher_fits(model: nn.Module, device: torch.device) -> tuple[bool, str]:
    """Whether a teacher copy of ``model`` takes at most ``TEACHER_SHARE`` of ``device``'s free
    memory, and the figures, for the run's notes. Unknown free memory counts as fitting: the
    model is in memory once already."""
    need, free = model_bytes(model), free_memory(device)
    if free is None:
        return True, f"the teacher takes {_gib(need)}; free memory on {device.type} unknown"
    return need <= TEACHER_SHARE * free, f"the teacher takes {_gib(need)} of {_gib(free)} free on {device.type}"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"
