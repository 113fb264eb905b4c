"""Recovery after a language-model prune, for ``benchmarks.llm``: the learning-rate schedule both
its trainings use (linear warm-up, cosine decay), a finetune (next-token loss, or the KL to a
teacher's outputs), and LoRA adapters (Hu et al. 2022) for the LLM-Pruner-style row, as LLM-Pruner
recovers (rank 8, alpha 16, dropout 0.05 on every projection, the base weights frozen).
A library of the benchmarks, not a benchmark."""
from __future__ import annotations

import math

import torch
from torch import nn


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``steps``."""
    return peak * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))


class LoRALinear(nn.Module):
    """``base(x) + scale * B(A(dropout(x)))`` with ``base`` frozen; input columns flagged in ``gone``
    (removed units) read zero in the adapter too, so it cannot bring them back."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float, gone: torch.Tensor | None) -> None:
        super().__init__()
        self.base = base
        base.requires_grad_(False)
        self.a = nn.Linear(base.in_features, rank, bias=False)
        self.b = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.b.weight)
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("keep", None if gone is None else (~gone).to(base.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(x)
        if self.keep is not None:
            h = h * self.keep
        return self.base(x) + self.scale * self.b(self.a(h))


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def add_lora(model: nn.Module, masked: list | None, rank: int = 8, alpha: float = 16.0,
             dropout: float = 0.05) -> None:
    """Freeze ``model`` and wrap every attention / MLP projection of its layers in a :class:`LoRALinear`;
    ``masked``: (weight, removed-input mask) pairs of the prune (``llm_baselines.Units.removed_inputs``;
    a Linear's is (1, in)), kept removed in the adapters."""
    gone = {id(w): mask[0] for w, mask in masked or []}
    model.requires_grad_(False)
    for layer in model.model.layers:
        for owner in (layer.self_attn, layer.mlp):
            for name in PROJECTIONS:
                base = getattr(owner, name, None)
                if isinstance(base, nn.Linear):
                    setattr(owner, name, LoRALinear(base, rank, alpha, dropout, gone.get(id(base.weight))))


def recover(model: nn.Module, rows: torch.Tensor, steps: int, lr: float, batch: int, warmup: int,
            gen: torch.Generator, teacher: nn.Module | None = None, masked: list | None = None) -> None:
    """Finetune ``model``'s trainable parameters in place for ``steps`` steps of ``batch`` rows drawn
    from ``rows`` (blocks of tokens + 1): next-token loss, or with a ``teacher`` the KL to its outputs
    (T = 1); the ``masked`` weights' flagged entries stay zero (their gradient is zeroed)."""
    for weight, mask in masked or []:
        if weight.requires_grad:
            weight.register_hook(lambda g, m=mask: g.masked_fill(m, 0.0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.95),
                            weight_decay=0.0)
    model.train()
    for step in range(steps):
        tokens = rows[torch.randint(len(rows), (batch,), generator=gen)]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        logits = model(tokens[:, :-1]).logits.float()
        if teacher is None:
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        else:
            with torch.no_grad():
                target = teacher(tokens[:, :-1]).logits.float()
            loss = nn.functional.kl_div(torch.log_softmax(logits, -1).flatten(0, 1),
                                        torch.log_softmax(target, -1).flatten(0, 1), log_target=True,
                                        reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


def prepare_on_tokens(model: nn.Module, rows: torch.Tensor, steps: int, lr: float, batch: int, seed: int,
                      speedup: float) -> None:
    """fxmeta's prepare stage (``fxmeta.prepare``: the prunability objective of a uniform l2 prune to
    ``speedup``) for ``steps`` batches of ``batch`` rows drawn from ``rows`` (blocks of tokens + 1) with
    ``seed``; fxmeta's training loop (AdamW at ``lr``, cosine, no warm-up), in place."""
    from torch.utils.data import TensorDataset

    import fxmeta
    from fxmeta.training.data import DataSplits
    from fxmeta.training.loop import TrainConfig

    picked = rows[torch.randint(len(rows), (steps * batch,), generator=torch.Generator().manual_seed(seed))]
    train = TensorDataset(picked[:, :-1], picked[:, 1:])
    few = TensorDataset(picked[:batch, :-1], picked[:batch, 1:])  # the loop's per-epoch check; prepare keeps the last
    data = DataSplits(train, few, few, num_classes=model.config.vocab_size, in_channels=0,
                      input_shape=(picked.shape[1] - 1,), description="token blocks", task="causal-lm")
    config = TrainConfig(epochs=1, lr=lr, optimizer="adamw", weight_decay=0.0, batch_size=batch, seed=seed,
                         device="cpu", progress=False)
    fxmeta.prepare(model, picked[:batch, :-1], data, config, [speedup], allocation="uniform")
