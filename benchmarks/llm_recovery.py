"""Recovery after a language-model prune, for ``benchmarks.llm``: the learning-rate schedule both
its trainings use (linear warm-up, cosine decay), a finetune (next-token loss, or the KL to a
teacher's outputs), and LoRA adapters (Hu et al. 2022) for the LLM-Pruner-style row, as LLM-Pruner
recovers (rank 8, alpha 16, dropout 0.05 on every projection, the base weights frozen), and the
after-recovery section of ``llm.md``. A library of the benchmarks, not a benchmark."""
from __future__ import annotations

import json
import math
from types import ModuleType

import torch
from torch import nn

from .common import mean_se, table


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


WIDTH_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")


def recovery_section(llm: ModuleType, cells: list[dict], dense_test: float, steps: int, scratch: dict | None = None,
                     dense_params: int = 0) -> list[str]:
    """The after-recovery section of ``llm.md``: the table, the from-scratch control and the targets;
    ``llm``: the ``benchmarks.llm`` module (its rows, labels and recovery settings)."""
    rows = []
    for method in llm.RECOVERY_METHODS:
        name, _, extra = method.partition("+")
        row = [llm.label(name) + {"distill": " + distillation", "lora": " + LoRA"}.get(extra, "")
               + (" (fxmeta transform's default)" if method == "fxmeta:activation:lstsq+distill" else "")]
        lrs, bits = [], []
        for fraction in llm.RECOVERY_TARGETS:
            mine = [c for c in cells if c["method"] == method and c["fraction"] == fraction]
            m, se = mean_se([math.exp(c["test"] - dense_test) for c in mine])
            row.append(f"{m:.3f} ± {se:.3f}")
            lrs.append(f"{mine[0]['recovery']['lr']:g}")
            bits.append(f"{mean_se([c['test'] for c in mine])[0] / math.log(2):.3f}")
        rows.append(row + [" / ".join(bits), " / ".join(lrs)])
    return [
        f"## After recovery ({steps} steps of {llm.RECOVERY['batch']}x{llm.BLOCK} tokens = "
        f"{100 * llm.RECOVERY['fraction_of_pretraining']:.0f} % of the pretraining tokens, the same for every row)", "",
        f"AdamW, {llm.RECOVERY['warmup']} warm-up steps, cosine; the peak learning rate of every row and target chosen "
        f"from {', '.join(f'{lr:g}' for lr in llm.RECOVERY_LRS)} by the validation loss after recovery (calibration draw "
        "and data order 0; last column). Next-token loss, or the KL to the dense model's outputs (distillation); the "
        "re-implemented baselines keep their removed columns at zero; Torch-Pruning's row is its Taylor prune (its "
        "better importance on validation one-shot), channels removed; LLM-Pruner's row recovers as LLM-Pruner does, "
        "by LoRA (rank 8, alpha 16, dropout 0.05 on every projection, the pruned weights frozen), on the same tokens. "
        "Mean ± SE over 3 seeds (calibration draw and data order). Test perplexity ratio:", "",
        table(["method"] + [f"{int(100 * f)} % removed" for f in llm.RECOVERY_TARGETS]
              + [f"test bits per byte (dense {dense_test / math.log(2):.3f})", "lr (20 % / 50 %)"], rows), "",
        *([f"From-scratch control: `LlamaForCausalLM` {json.dumps({k: llm.SCRATCH[k] for k in WIDTH_KEYS})}, "
           f"{scratch['params']:,} non-embedding parameters ({100 * (1 - scratch['params'] / dense_params):.1f} % fewer than "
           f"the dense model), trained by the dense recipe on {scratch['tokens'] / 1e6:.2f}M tokens (the pruned models' "
           f"pretraining plus recovery) in {scratch['minutes']:.0f} min: test perplexity ratio "
           f"{math.exp(scratch['test_draw'] - dense_test):.3f}, {scratch['test_draw'] / math.log(2):.3f} bits per byte "
           "(compare with the 50 % column).", ""] if scratch else []),
        *recovery_targets(llm, cells, dense_test, scratch), ""]


def recovery_targets(llm: ModuleType, cells: list[dict], dense_test: float, scratch: dict | None) -> list[str]:
    """The after-recovery targets, on the test draw (fxmeta: its default, the prune with data recovered by
    distillation from the dense model, as ``fxmeta transform`` finetunes; the next-token finetune beside); the
    best baseline is the one with the lowest validation loss."""
    def ratio(method: str, fraction: float) -> float:
        return llm._ratio(cells, method, fraction, "test", dense_test)

    def val_loss(method: str, fraction: float) -> float:
        values = [c["val"] for c in cells if c["method"] == method and c["fraction"] == fraction]
        return sum(values) / len(values)

    out = []
    for fraction in llm.RECOVERY_TARGETS:
        ours = ratio("fxmeta:activation:lstsq+distill", fraction)
        baselines = ("flap-uniform", "wanda-sp", "fxmeta:l2:none", "llm-pruner+lora", "tp-taylor")
        pick = min(baselines, key=lambda m: val_loss(m, fraction))
        best = ratio(pick, fraction)
        out.append(f"- {int(100 * fraction)} %: fxmeta {ours:.3f} (on the next tokens instead: "
                   f"{ratio('fxmeta:activation:lstsq', fraction):.3f}) vs the best baseline on validation "
                   f"({llm.label(pick.partition('+')[0])}{' + LoRA' if pick.endswith('+lora') else ''}) {best:.3f}, the best on test "
                   f"{min(ratio(m, fraction) for m in baselines):.3f}: {'met' if ours <= best else 'missed'} "
                   "(means of 3 seeds).")
    if scratch:
        control = math.exp(scratch["test_draw"] - dense_test)
        mine = min(("fxmeta:activation:lstsq+distill", "fxmeta:activation:lstsq:global-mean+distill"),
                   key=lambda m: val_loss(m, 0.5))  # fxmeta's best recovery on validation
        ours = ratio(mine, 0.5)
        equal = math.exp(scratch["equal"]["test_draw"] - dense_test)
        default = ratio("fxmeta:activation:lstsq+distill", 0.5)
        out.append(f"- 50 %, against the same size trained from scratch on the recovery's tokens alone: fxmeta "
                   f"{default:.3f} vs {equal:.3f}: " + ("met." if default <= equal else "missed."))
        out.append(f"- 50 %, against the control trained on the pretraining plus recovery tokens: {llm.label(mine.partition('+')[0])} "
                   f"+ distillation (fxmeta's best on validation) {ours:.3f} "
                   f"vs {control:.3f}: " + ("met." if ours <= control else "missed at this budget; with the recovery "
                                            "budget grown to the pretraining's, see `llm_budget.md`."))
    return ["Targets after recovery:", "", *out, ""]
