"""Structured LLM pruners re-implemented from their papers (labelled so in every report), for
``benchmarks.llm``: FLAP (An et al. 2024: fluctuation metric, adaptive or uniform structure, bias
compensation), Wanda-sp (An et al.'s structured Wanda: weight x input norm), LLM-Pruner (Ma et al.
2023: first-order Taylor of the coupled structures; its LoRA recovery is in ``llm_recovery``) and
random, on a Hugging Face Llama or GPT-2, applied as masks (the removed units' input columns of
``down_proj`` / ``o_proj``, GPT-2's ``c_proj``, zeroed: the same function as removing them) with
the parameter count a removal would save; and
Torch-Pruning's own LLM recipe attempted as real code (``tp_attempt``).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch


def non_embedding_params(model: torch.nn.Module) -> int:
    embed = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not embed)


class Units:
    """The structured units of a Llama or a GPT-2: each layer's MLP channels and its GQA groups (a
    key/value head with its query heads; GPT-2: a head), with their non-embedding parameter counts.
    GPT-2's ``Conv1D`` layers store (in, out) weights and its query / key / value projections are one
    fused ``c_attn``; :meth:`reader_weight` gives every reader's weight as an (out, in) view."""

    def __init__(self, model) -> None:
        cfg = model.config
        if cfg.model_type not in ("gpt2", "llama"):
            raise NotImplementedError(f"the re-implemented baselines read Llama and GPT-2 layouts, not {cfg.model_type!r}")
        self.gpt2 = cfg.model_type == "gpt2"
        if self.gpt2:
            self.layers = list(model.transformer.h)
            self.hidden, self.heads = cfg.n_embd, cfg.n_head
            self.head_dim, self.q_per_kv = cfg.n_embd // cfg.n_head, 1
            self.mlp_cost = 2 * self.hidden + 1  # its c_fc column and bias, its c_proj row
            self.group_cost = 4 * self.hidden * self.head_dim + 3 * self.head_dim  # q, k, v columns + biases; c_proj rows
        else:
            self.layers = list(model.model.layers)
            self.hidden, self.heads = cfg.hidden_size, cfg.num_attention_heads
            self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            self.q_per_kv = cfg.num_attention_heads // cfg.num_key_value_heads
            self.mlp_cost = 3 * self.hidden
            self.group_cost = 2 * self.hidden * self.head_dim * (self.q_per_kv + 1)

    def reader(self, i: int, kind: str) -> torch.nn.Module:
        """The layer that reads layer ``i``'s units of ``kind``: ``down_proj`` / ``o_proj`` (GPT-2: ``c_proj``)."""
        layer = self.layers[i]
        if self.gpt2:
            return layer.mlp.c_proj if kind == "mlp" else layer.attn.c_proj
        return layer.mlp.down_proj if kind == "mlp" else layer.self_attn.o_proj

    def reader_weight(self, i: int, kind: str) -> torch.Tensor:
        """The reader's weight as an (out, in) matrix (a view: writing it writes the layer)."""
        w = self.reader(i, kind).weight
        return w.T if self.gpt2 else w

    def columns(self, kind: str, gone: torch.Tensor) -> torch.Tensor:
        """The reader's input columns of the units flagged in ``gone``."""
        return gone if kind == "mlp" else gone.repeat_interleave(self.q_per_kv * self.head_dim)

    def removed_inputs(self, kind: str, gone: torch.Tensor) -> torch.Tensor:
        """The reader's removed input features as a mask shaped to broadcast over its stored weight:
        (1, in) for a Linear's (out, in), (in, 1) for GPT-2's (in, out) ``Conv1D``."""
        cols = self.columns(kind, gone)
        return cols[:, None] if self.gpt2 else cols[None, :]

    def mask(self, removed: dict[tuple[int, str], torch.Tensor], shifts: dict | None = None) -> list:
        """Zero the removed units' input columns of their readers (the same function as removing
        them); ``shifts`` adds FLAP's bias compensation through forward hooks."""
        hooks = []
        with torch.no_grad():
            for (i, kind), gone in removed.items():
                self.reader_weight(i, kind)[:, self.columns(kind, gone)] = 0
                shift = (shifts or {}).get((i, kind))
                if shift is not None:
                    hooks.append(self.reader(i, kind).register_forward_hook(lambda m, a, out, b=shift: out + b))
        return hooks


def _inputs(model, units: Units, calib: list) -> dict:
    """Per layer, the inputs of its units' readers on the calibration batches (as rows)."""
    seen: dict[tuple[int, str], list] = {}
    hooks = []
    for i in range(len(units.layers)):
        for kind in ("mlp", "attn"):
            hooks.append(units.reader(i, kind).register_forward_hook(
                lambda m, a, out, key=(i, kind): seen.setdefault(key, []).append(a[0].reshape(-1, a[0].shape[-1]))))
    with torch.no_grad():
        for x, _ in calib:
            model(x)
    for h in hooks:
        h.remove()
    return {k: torch.cat(v).double() for k, v in seen.items()}


def _taylor(model, calib: list, units: "Units") -> dict:
    """LLM-Pruner's element-wise first-order Taylor importance (its ``param_first``): per unit, the sum
    of |w * dL/dw| over every weight of its coupled structure (an MLP channel: its ``gate_proj`` and
    ``up_proj`` rows and ``down_proj`` column; a GQA group: its query heads' ``q_proj`` rows, its
    key / value head's ``k_proj`` / ``v_proj`` rows and the ``o_proj`` columns they feed; GPT-2: the
    same structures in ``c_fc`` / ``c_attn`` and ``c_proj``, biases included), the gradient of the
    next-token loss summed over the calibration batches."""
    model.zero_grad(set_to_none=True)
    for x, y in calib:
        logits = model(x).logits.float()
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()
    scores = {}
    q_rows, kv_rows = units.q_per_kv * units.head_dim, units.head_dim

    def s(p):
        return (p * p.grad).abs().double()

    with torch.no_grad():
        for i, layer in enumerate(units.layers):
            if units.gpt2:  # (in, out) weights; c_attn's outputs: all queries, then keys, then values
                mlp, attn = layer.mlp, layer.attn
                scores[(i, "mlp")] = s(mlp.c_fc.weight).sum(0) + s(mlp.c_fc.bias) + s(mlp.c_proj.weight).sum(1)
                fused = (s(attn.c_attn.weight).sum(0) + s(attn.c_attn.bias)).view(3, units.heads, units.head_dim)
                scores[(i, "attn")] = fused.sum((0, 2)) + s(attn.c_proj.weight).sum(1).view(-1, units.head_dim).sum(1)
                continue
            mlp, attn = layer.mlp, layer.self_attn
            scores[(i, "mlp")] = s(mlp.gate_proj.weight).sum(1) + s(mlp.up_proj.weight).sum(1) + s(mlp.down_proj.weight).sum(0)
            scores[(i, "attn")] = (s(attn.q_proj.weight).sum(1).view(-1, q_rows).sum(1)
                                   + s(attn.k_proj.weight).sum(1).view(-1, kv_rows).sum(1)
                                   + s(attn.v_proj.weight).sum(1).view(-1, kv_rows).sum(1)
                                   + s(attn.o_proj.weight).sum(0).view(-1, q_rows).sum(1))
    model.zero_grad(set_to_none=True)
    return scores


def reimplemented(model, calib: list, fraction: float, method: str, seed: int,
                  total: int | None = None) -> tuple[list, int, list]:
    """FLAP, Wanda-sp or random, re-implemented from their papers (mask-based, on a Llama or a GPT-2
    ``model`` in place): returns the compensation hooks, the parameters removed (``fraction`` of
    ``total``, default: the non-embedding parameters) and the masked weights as ``(weight, mask)``
    pairs, the mask flagging the removed inputs and broadcasting over the stored weight
    (``Units.removed_inputs``; a finetune keeps those entries at zero).

    Per unit, from the inputs X of the layer that reads it (``down_proj`` / ``o_proj``; a GQA group's
    channels summed): Wanda-sp ``sum_i |W_ij| * ||X_j||``, the same fraction removed in every layer;
    FLAP the fluctuation ``Var(X_j) * ||W_:,j||^2``, standardised per kind of unit across layers and
    ranked globally (its adaptive structure, AL-AM; "flap-uniform": every layer alike, its UL-UM), and
    the removed channels' mean contribution ``W_:,removed @ mean(X_removed)`` added back as a bias;
    LLM-Pruner: :func:`_taylor`, no compensation (here on every layer; on LLaMA-7B it spares the first
    four and the last two); random: uniform scores. All but FLAP's adaptive structure remove the same
    units from every layer: as many GQA groups as the fraction allows (rounded down), then MLP channels up to
    the parameter budget."""
    units = Units(model)
    xs = _inputs(model, units, calib)
    gen = torch.Generator().manual_seed(seed)
    scores = _taylor(model, calib, units) if method == "llm-pruner" else {}
    for (i, kind), x in xs.items():
        if method == "llm-pruner":
            continue
        w = units.reader_weight(i, kind).detach().double()
        if method.startswith("flap"):
            s = x.var(0) * w.pow(2).sum(0)
        elif method == "wanda-sp":
            s = (w.abs() * x.norm(dim=0)).sum(0)
        else:
            s = torch.rand(w.shape[1], generator=gen, dtype=torch.float64)
        if kind == "attn":
            s = s.view(-1, units.q_per_kv * units.head_dim).sum(1)
        scores[(i, kind)] = s
    cost = {"mlp": units.mlp_cost, "attn": units.group_cost}
    budget = fraction * (total or non_embedding_params(model))
    removed: dict[tuple[int, str], torch.Tensor] = {}
    if method == "flap":
        pooled = {}
        for kind in cost:
            allv = torch.cat([v for (i, k), v in scores.items() if k == kind])
            for key in [k for k in scores if k[1] == kind]:
                pooled[key] = (scores[key] - allv.mean()) / allv.std().clamp_min(1e-12)
        order = sorted(((float(v), key, j) for key, s in pooled.items() for j, v in enumerate(s)))
        count = {key: len(s) for key, s in scores.items()}
        taken = 0.0
        for _, key, j in order:
            if taken >= budget:
                break
            if count[key] <= 1:
                continue  # keep one unit per layer and kind
            removed.setdefault(key, torch.zeros(len(scores[key]), dtype=torch.bool))[j] = True
            count[key] -= 1
            taken += cost[key[1]]
    else:  # every layer alike: the same number of GQA groups (rounded down), MLP channels for the rest
        heads = {key: s for key, s in scores.items() if key[1] == "attn"}
        mlps = {key: s for key, s in scores.items() if key[1] == "mlp"}
        k_heads = min(len(next(iter(heads.values()))) - 1, int(fraction * len(next(iter(heads.values())))))
        left = budget - k_heads * cost["attn"] * len(heads)
        k_mlp = min(len(next(iter(mlps.values()))) - 1, max(0, round(left / (cost["mlp"] * len(mlps)))))
        for key, s in scores.items():
            gone = torch.zeros(len(s), dtype=torch.bool)
            gone[s.argsort()[:k_heads if key[1] == "attn" else k_mlp]] = True
            removed[key] = gone
    shifts = None
    if method.startswith("flap"):
        shifts = {}
        for key, gone in removed.items():
            w = units.reader_weight(*key).detach().double()
            cols = units.columns(key[1], gone)
            shifts[key] = (w[:, cols] @ xs[key][:, cols].mean(0)).float()
    hooks = units.mask(removed, shifts)
    masked = [(units.reader(i, kind).weight, units.removed_inputs(kind, gone)) for (i, kind), gone in removed.items()]
    params = sum(int(g.sum()) * cost[k] for (_, k), g in removed.items())
    return hooks, params, masked


TP_TIMEOUT = 120  # seconds Torch-Pruning's pruner gets on the dense model


def tp_attempt(dense_folder: Path, block: int, fraction: float = 0.2) -> dict:
    """Torch-Pruning 1.6's LLM recipe (``examples/LLMs/prune_llm.py``: ``MetaPruner`` with per-projection
    head counts, ``prune_num_heads``, no head-dim pruning, ``lm_head`` ignored, local L2 ranking) on the
    dense model, in a child process stopped after ``TP_TIMEOUT`` seconds; its outcome is cached."""
    record = dense_folder / f"tp_attempt_{fraction}.json"
    if record.is_file():
        return json.loads(record.read_text())
    code = f"""
import faulthandler, torch, torch_pruning as tp, transformers as tf
faulthandler.dump_traceback_later({TP_TIMEOUT - 10}, exit=True)  # where it is when the time is up
torch.set_num_threads(1)
model = tf.LlamaForCausalLM.from_pretrained({str(dense_folder)!r}).eval()
heads = {{}}
for name, m in model.named_modules():
    if name.endswith("self_attn"):
        heads[m.q_proj] = model.config.num_attention_heads
        heads[m.k_proj] = heads[m.v_proj] = model.config.num_key_value_heads
pruner = tp.pruner.MetaPruner(model, example_inputs=torch.randint(0, 256, (1, {block})),
    importance=tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"), global_pruning=False,
    pruning_ratio={fraction}, ignored_layers=[model.lm_head], num_heads=heads, prune_num_heads=True,
    prune_head_dims=False, head_pruning_ratio={fraction}, round_to=4)
for group in pruner.step(interactive=True):
    group.prune()
print("finished")
"""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TP_TIMEOUT)
        out = {"finished": proc.returncode == 0 and "finished" in proc.stdout, "returncode": proc.returncode}
        if "Timeout (" in proc.stderr:  # faulthandler's dump: the innermost torch_pruning frames
            frames = [line.strip() for line in proc.stderr.splitlines()
                      if line.strip().startswith("File ") and "torch_pruning" in line]
            out["timeout"] = TP_TIMEOUT - 10
            out["stuck_in"] = [f.split("site-packages/")[-1].replace('", line ', ":") for f in frames[:3]]
        elif proc.returncode:
            out["error"] = proc.stderr.strip().splitlines()[-1]
    except subprocess.TimeoutExpired:
        out = {"finished": False, "timeout": TP_TIMEOUT}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    import torch_pruning

    out["version"] = torch_pruning.__version__
    record.write_text(json.dumps(out))
    return out


def tp_mlp(model, calib: list, fraction: float, importance: str) -> int:
    """Torch-Pruning's real code on the MLP channels alone (``model`` pruned in place; returns the
    non-embedding parameters removed): ``MetaPruner``, local (the same ratio in every layer, as its LLM
    example), ``round_to=4``, the attention projections and ``lm_head`` ignored, since with them in
    its graph Torch-Pruning 1.6 does not finish building its groups on a GQA Llama (``tp_attempt``;
    VainF/Torch-Pruning#527). The ratio removes ``fraction`` of the non-embedding parameters from the
    MLPs. ``importance``: "magnitude" (``GroupMagnitudeImportance(p=2)``) or "taylor"
    (``GroupTaylorImportance``, the next-token loss's gradient summed over the calibration batches)."""
    import torch_pruning as tp

    before = non_embedding_params(model)
    units = Units(model)
    inter = model.config.intermediate_size
    ratio = min(inter - 1, fraction * before / (units.mlp_cost * len(units.layers))) / inter
    ignored = [model.lm_head] + [getattr(layer.self_attn, name) for layer in units.layers
                                 for name in ("q_proj", "k_proj", "v_proj", "o_proj")]
    if importance == "taylor":
        imp = tp.importance.GroupTaylorImportance()
        model.zero_grad(set_to_none=True)
        for x, y in calib:
            logits = model(x).logits.float()
            torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()
    else:
        imp = tp.importance.GroupMagnitudeImportance(p=2)
    with warnings.catch_warnings():  # the norms' weights it calls unwrapped: their (hidden) dim is not pruned here
        warnings.filterwarnings("ignore", "Unwrapped parameters", UserWarning)
        pruner = tp.pruner.MetaPruner(model, example_inputs=calib[0][0][:1], importance=imp, global_pruning=False,
                                      pruning_ratio=ratio, ignored_layers=ignored, round_to=4)
        pruner.step()
    model.zero_grad(set_to_none=True)
    return before - non_embedding_params(model)
