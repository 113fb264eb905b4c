"""Language-model quality: a small Llama trained here, pruned by fxmeta and by its peers.

    python -m benchmarks.llm --stage base      # train (or load) the cached dense model
    python -m benchmarks.llm --stage oneshot   # one-shot structured pruning, no training
    python -m benchmarks.llm                   # both, then the report

**Data.** The Python standard library's own ``.py`` sources of the running interpreter (no
``test`` / ``tests`` folders, no ``site-packages``), split by file with
``fxmeta.training.text.assign_splits`` (80 / 10 / 10 % train / validation / test, by a hash of
the relative path), as UTF-8 bytes (vocabulary 256: the loss in nats per token is the loss per
byte). The interpreter version and a checksum of the file list and contents go into the report.
Calibration batches are drawn from the training split; every choice is made on validation.

**Model.** A Llama-style network built from a ``transformers`` config (RMSNorm, SwiGLU, RoPE,
GQA), trained by this script (AdamW, linear warm-up, cosine decay) on ``TOKENS`` training
tokens (>= 20x its non-embedding parameters), validation loss logged along the way; cached
under ``~/.cache/fxmeta-bench/llm``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import sysconfig
import time
from pathlib import Path

import torch

from .common import cache_dir, header, say, table

BLOCK = 128  # tokens per sequence (training and evaluation)
MODEL = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=256, max_position_embeddings=BLOCK, tie_word_embeddings=True,
             use_cache=False)
TRAIN = dict(batch=32, lr=3e-3, warmup=200, weight_decay=0.1, seed=0, eval_every=250, eval_blocks=256)
TOKENS_PER_PARAM = 20
RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------ data

def corpus_files() -> tuple[Path, list[Path]]:
    """The standard library's own sources: its folder and the files, sorted."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
    files = sorted(p for p in lib.rglob("*.py") if not skip & set(p.relative_to(lib).parts))
    return lib, files


def corpus() -> dict:
    """Token tensors of the three splits (UTF-8 bytes, files joined by a NUL) and their provenance."""
    from fxmeta.training.text import assign_splits

    lib, files = corpus_files()
    texts = []
    digest = hashlib.sha256()
    for path in files:
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue  # a handful of stdlib files are Latin-1 test fixtures
        rel = path.relative_to(lib).as_posix()
        digest.update(rel.encode() + b"\0" + data)
        texts.append((rel, data))
    splits = assign_splits([rel for rel, _ in texts])
    streams: list[list[bytes]] = [[], [], []]
    for (_, data), split in zip(texts, splits):
        streams[split].append(data + b"\0")
    tokens = [torch.frombuffer(bytearray(b"".join(s)), dtype=torch.uint8).long() for s in streams]
    return {"train": tokens[0], "val": tokens[1], "test": tokens[2], "files": [splits.count(i) for i in range(3)],
            "sha256": digest.hexdigest()[:16], "python": sys.version.split()[0], "root": str(lib)}


def blocks(tokens: torch.Tensor, count: int | None = None, seed: int = 0) -> torch.Tensor:
    """Non-overlapping ``BLOCK + 1`` windows; ``count`` of them drawn with ``seed`` (None: all, in order)."""
    n = len(tokens) // (BLOCK + 1)
    rows = tokens[: n * (BLOCK + 1)].view(n, BLOCK + 1)
    if count is None or count >= n:
        return rows
    return rows[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count]]


@torch.no_grad()
def nll(model: torch.nn.Module, rows: torch.Tensor, batch: int = 64) -> float:
    """Mean next-token loss (nats per byte) over ``rows``."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), batch):
        r = rows[i:i + batch]
        logits = model(r[:, :-1]).logits.float()
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), r[:, 1:].reshape(-1),
                                                         reduction="sum"))
        count += r[:, 1:].numel()
    return total / count


# ------------------------------------------------------------------------------- the model

def build_model(config: dict = MODEL):
    import transformers as tf

    return tf.LlamaForCausalLM(tf.LlamaConfig(**config))


def non_embedding_params(model: torch.nn.Module) -> int:
    embed = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not embed)


def train_dense(data: dict, folder: Path, threads: int) -> dict:
    """Train the dense model once; returns its record (the weights are in ``folder``)."""
    record_path = folder / "record.json"
    if record_path.is_file() and (folder / "model.safetensors").is_file():
        return json.loads(record_path.read_text())
    torch.manual_seed(TRAIN["seed"])
    model = build_model()
    params = non_embedding_params(model)
    tokens = TOKENS_PER_PARAM * params
    steps = math.ceil(tokens / (TRAIN["batch"] * BLOCK))
    train_rows = blocks(data["train"])
    val_rows = blocks(data["val"], TRAIN["eval_blocks"], seed=1)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": TRAIN["weight_decay"]},
                             {"params": other, "weight_decay": 0.0}], lr=TRAIN["lr"], betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(TRAIN["seed"])
    order = torch.randperm(len(train_rows), generator=gen)
    curve, t0, position = [], time.perf_counter(), 0
    say(f"dense model: {params} non-embedding parameters, {steps} steps of {TRAIN['batch']}x{BLOCK} = "
        f"{steps * TRAIN['batch'] * BLOCK / 1e6:.1f}M tokens ({len(train_rows) * BLOCK / 1e6:.1f}M in the train split)")
    for step in range(steps):
        if position + TRAIN["batch"] > len(order):
            order, position = torch.randperm(len(train_rows), generator=gen), 0
        rows = train_rows[order[position:position + TRAIN["batch"]]]
        position += TRAIN["batch"]
        lr = TRAIN["lr"] * min(1.0, (step + 1) / TRAIN["warmup"]) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        logits = model(rows[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % TRAIN["eval_every"] == 0 or step + 1 == steps:
            val = nll(model, val_rows)
            curve.append({"step": step + 1, "tokens": (step + 1) * TRAIN["batch"] * BLOCK, "train_loss": float(loss),
                          "val_loss": val, "seconds": round(time.perf_counter() - t0, 1)})
            say(f"step {step + 1}/{steps}: train {float(loss):.4f} val {val:.4f} nats/byte "
                f"({time.perf_counter() - t0:.0f} s)")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    record = {"params": params, "tokens": steps * TRAIN["batch"] * BLOCK, "steps": steps, "curve": curve,
              "minutes": (time.perf_counter() - t0) / 60, "threads": threads, "config": MODEL, "train": TRAIN,
              "val_loss": nll(model, blocks(data["val"])), "data": {k: data[k] for k in ("files", "sha256", "python")}}
    record_path.write_text(json.dumps(record, indent=1))
    return record


def load_dense(folder: Path):
    import transformers as tf

    return tf.LlamaForCausalLM.from_pretrained(folder).eval()


# ----------------------------------------------------------------------- one-shot pruning

TARGETS = (0.2, 0.3, 0.5)  # fractions of non-embedding parameters removed
CALIB = dict(batches=8, batch=16)  # calibration: 8 x 16 blocks of the training split (16k tokens)
EVAL_BLOCKS = dict(val=512, test=2048)  # fixed draws of each split's blocks (65k / 262k tokens)
FXMETA_ROWS = [(imp, comp) for imp in ("l2", "activation", "taylor") for comp in ("none", "bias", "lstsq")]


def calibration(data: dict, seed: int) -> list:
    rows = blocks(data["train"], CALIB["batches"] * CALIB["batch"], seed=100 + seed)
    return [(r[:, :-1], r[:, 1:]) for r in rows.split(CALIB["batch"])]


class Units:
    """The structured units of a Llama: each layer's MLP channels and its GQA groups (a key/value
    head with its query heads), with their non-embedding parameter counts."""

    def __init__(self, model) -> None:
        cfg = model.config
        self.layers = list(model.model.layers)
        self.hidden = cfg.hidden_size
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.q_per_kv = cfg.num_attention_heads // cfg.num_key_value_heads
        self.mlp_cost = 3 * self.hidden
        self.group_cost = 2 * self.hidden * self.head_dim * (self.q_per_kv + 1)

    def mask(self, removed: dict[tuple[int, str], torch.Tensor], shifts: dict | None = None) -> list:
        """Zero the removed units' input columns of ``down_proj`` / ``o_proj`` (the same function as
        removing them); ``shifts`` adds FLAP's bias compensation through forward hooks."""
        hooks = []
        with torch.no_grad():
            for (i, kind), gone in removed.items():
                layer = self.layers[i]
                if kind == "mlp":
                    layer.mlp.down_proj.weight[:, gone] = 0
                else:
                    cols = gone.repeat_interleave(self.q_per_kv * self.head_dim)
                    layer.self_attn.o_proj.weight[:, cols] = 0
                shift = (shifts or {}).get((i, kind))
                if shift is not None:
                    target = layer.mlp.down_proj if kind == "mlp" else layer.self_attn.o_proj
                    hooks.append(target.register_forward_hook(lambda m, a, out, b=shift: out + b))
        return hooks


def _inputs(model, calib: list) -> dict:
    """Per layer, the inputs of ``down_proj`` and ``o_proj`` on the calibration batches (as rows)."""
    seen: dict[tuple[int, str], list] = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        for kind, module in (("mlp", layer.mlp.down_proj), ("attn", layer.self_attn.o_proj)):
            hooks.append(module.register_forward_hook(
                lambda m, a, out, key=(i, kind): seen.setdefault(key, []).append(a[0].reshape(-1, a[0].shape[-1]))))
    with torch.no_grad():
        for x, _ in calib:
            model(x)
    for h in hooks:
        h.remove()
    return {k: torch.cat(v).double() for k, v in seen.items()}


def reimplemented(model, calib: list, fraction: float, method: str, seed: int) -> tuple[list, int]:
    """FLAP, Wanda-sp or random, re-implemented from their papers (mask-based, on ``model`` in place):
    returns the compensation hooks and the non-embedding parameters removed.

    Per unit, from the inputs X of the layer that reads it (``down_proj`` / ``o_proj``; a GQA group's
    channels summed): Wanda-sp ``sum_i |W_ij| * ||X_j||``, the same fraction removed in every layer;
    FLAP the fluctuation ``Var(X_j) * ||W_:,j||^2``, standardised per kind of unit across layers and
    ranked globally (its adaptive structure, AL-AM; "flap-uniform": every layer alike, its UL-UM), and
    the removed channels' mean contribution ``W_:,removed @ mean(X_removed)`` added back as a bias;
    random: uniform scores. Wanda-sp, random and FLAP's uniform variant remove the same units from
    every layer: as many GQA groups as the fraction allows (rounded down), then MLP channels up to
    the parameter budget."""
    units = Units(model)
    xs = _inputs(model, calib)
    gen = torch.Generator().manual_seed(seed)
    scores = {}
    for (i, kind), x in xs.items():
        layer = units.layers[i]
        w = (layer.mlp.down_proj if kind == "mlp" else layer.self_attn.o_proj).weight.detach().double()
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
    budget = fraction * non_embedding_params(model)
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
            i, kind = key
            layer = units.layers[i]
            w = (layer.mlp.down_proj if kind == "mlp" else layer.self_attn.o_proj).weight.detach().double()
            cols = gone if kind == "mlp" else gone.repeat_interleave(units.q_per_kv * units.head_dim)
            shifts[key] = (w[:, cols] @ xs[key][:, cols].mean(0)).float()
    hooks = units.mask(removed, shifts)
    params = sum(int(g.sum()) * cost[k] for (_, k), g in removed.items())
    return hooks, params


def oneshot_cell(dense_folder: Path, data: dict, method: str, fraction: float, seed: int, cache: Path) -> dict:
    """One method at one target and calibration seed: validation and test loss, params removed."""
    from .common import cached_cell

    parts = {"stage": "oneshot", "model": dense_folder.name, "method": method, "fraction": fraction, "seed": seed,
             "calib": CALIB, "eval": EVAL_BLOCKS}

    def run() -> dict:
        import fxmeta
        from fxmeta.pruning.spec import PruneSpec

        model = load_dense(dense_folder)
        before = non_embedding_params(model)
        calib = calibration(data, seed)
        t0 = time.perf_counter()
        if method.startswith("fxmeta"):
            _, imp, comp = method.split(":")
            speedup = FLOPS_FOR.get(fraction, 1 / (1 - fraction))
            spec = PruneSpec(speedup, importance=imp, compensate=comp, allocation="uniform", seed=seed)
            model = fxmeta.prune(model, calib[0][0][:1], spec=spec, calibration=calib).module.eval()
            removed = before - non_embedding_params(model)
        else:
            _, removed = reimplemented(model, calib, fraction, method, seed)
        seconds = time.perf_counter() - t0
        return {"removed": removed / before, "prune_seconds": round(seconds, 2),
                "val": nll(model, blocks(data["val"], EVAL_BLOCKS["val"], seed=2)),
                "test": nll(model, blocks(data["test"], EVAL_BLOCKS["test"], seed=3))}

    return cached_cell(cache, parts, run)


FLOPS_FOR: dict[float, float] = {}  # fxmeta's FLOPs target per params fraction (filled by calibrate_targets)


def calibrate_targets(dense_folder: Path, data: dict) -> dict[float, float]:
    """The FLOPs speed-up at which fxmeta's l2 prune removes each fraction of the non-embedding
    parameters (bisection on the parameter count alone: no data, no scores)."""
    import fxmeta
    from fxmeta.pruning.spec import PruneSpec

    model = load_dense(dense_folder)
    x = blocks(data["train"], 1)[:, :-1]
    before = non_embedding_params(model)
    out = {}
    for fraction in TARGETS:
        lo, hi = 1.0, 8.0
        for _ in range(7):
            mid = (lo + hi) / 2
            pruned = fxmeta.prune(model, x, spec=PruneSpec(mid, allocation="uniform"), check=False).module
            if 1 - non_embedding_params(pruned) / before < fraction:
                lo = mid
            else:
                hi = mid
        out[fraction] = round(hi, 3)
    return out


# ------------------------------------------------------------------------------------ main

def write_base_report(record: dict, data: dict, args: argparse.Namespace) -> None:
    rows = [[c["step"], f"{c['tokens'] / 1e6:.2f}M", f"{c['train_loss']:.4f}", f"{c['val_loss']:.4f}",
             f"{math.exp(c['val_loss']):.3f}"] for c in record["curve"]]
    text = "\n".join([
        "# Language models: the dense base model", "",
        header(f"python -m benchmarks.llm --stage base --threads {args.threads}", args.threads, str(TRAIN["seed"])), "",
        f"Data: the standard library sources of Python {data['python']} ({data['root']}), files split "
        f"{'/'.join(map(str, data['files']))} train/val/test by a hash of their path, UTF-8 bytes; checksum "
        f"{data['sha256']}. Train / val / test: {len(data['train']) / 1e6:.2f}M / {len(data['val']) / 1e6:.2f}M / "
        f"{len(data['test']) / 1e6:.2f}M bytes.", "",
        f"Model: `LlamaForCausalLM` {json.dumps(MODEL)}; {record['params']:,} non-embedding parameters; "
        f"{record['tokens'] / 1e6:.1f}M training tokens ({record['tokens'] / record['params']:.0f}x the parameters) "
        f"in {record['minutes']:.0f} min; AdamW {json.dumps(TRAIN)}.", "",
        f"Dense validation loss {record['val_loss']:.4f} nats/byte = {record['val_loss'] / math.log(2):.3f} bits/byte, "
        f"perplexity {math.exp(record['val_loss']):.3f} (the whole validation split).", "",
        "Loss curve (validation on a fixed draw of 256 blocks):", "",
        table(["step", "tokens", "train loss", "val loss", "val perplexity"], rows), ""])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "llm_base.md").write_text(text)
    say(f"wrote {RESULTS / 'llm_base.md'}")


METHODS = [f"fxmeta:{imp}:{comp}" for imp, comp in FXMETA_ROWS] + ["flap", "flap-uniform", "wanda-sp", "random"]
LABELS = {"flap": "FLAP (re-implemented), adaptive structure", "flap-uniform": "FLAP (re-implemented), uniform",
          "wanda-sp": "Wanda-sp (re-implemented)", "random": "random"}


def label(method: str) -> str:
    if method.startswith("fxmeta"):
        _, imp, comp = method.split(":")
        return f"fxmeta {imp} + {comp}"
    return LABELS[method]


TP_TIMEOUT = 120  # seconds Torch-Pruning's pruner gets on the dense model


def tp_attempt(dense_folder: Path, fraction: float = 0.2) -> dict:
    """Torch-Pruning 1.6's LLM recipe (``examples/LLMs/prune_llm.py``: ``MetaPruner`` with per-projection
    head counts, ``prune_num_heads``, no head-dim pruning, ``lm_head`` ignored, local L2 ranking) on the
    dense model, in a child process stopped after ``TP_TIMEOUT`` seconds; its outcome is cached."""
    import subprocess

    record = dense_folder / f"tp_attempt_{fraction}.json"
    if record.is_file():
        return json.loads(record.read_text())
    code = f"""
import torch, torch_pruning as tp, transformers as tf
torch.set_num_threads(1)
model = tf.LlamaForCausalLM.from_pretrained({str(dense_folder)!r}).eval()
heads = {{}}
for name, m in model.named_modules():
    if name.endswith("self_attn"):
        heads[m.q_proj] = model.config.num_attention_heads
        heads[m.k_proj] = heads[m.v_proj] = model.config.num_key_value_heads
pruner = tp.pruner.MetaPruner(model, example_inputs=torch.randint(0, 256, (1, {BLOCK})),
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
        out = {"finished": proc.returncode == 0 and "finished" in proc.stdout, "returncode": proc.returncode,
               "error": proc.stderr.strip().splitlines()[-1] if proc.returncode else None}
    except subprocess.TimeoutExpired:
        out = {"finished": False, "timeout": TP_TIMEOUT}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    import torch_pruning

    out["version"] = torch_pruning.__version__
    record.write_text(json.dumps(out))
    return out


def _ratio(cells: list[dict], method: str, fraction: float, split: str, dense: float) -> float:
    from .common import mean_se

    return mean_se([math.exp(c[split] - dense) for c in cells if c["method"] == method and c["fraction"] == fraction])[0]


def targets_section(cells: list[dict], dense_val: float, dense_test: float, tp: dict) -> list[str]:
    """The issue's one-shot targets, on test, with every choice (the FLAP variant) made on validation."""
    ours = "fxmeta:activation:lstsq"  # the product's default with data (CALIBRATED), not picked here
    flap = min(("flap", "flap-uniform"), key=lambda m: _ratio(cells, m, 0.2, "val", dense_val))
    ours20, flap20 = _ratio(cells, ours, 0.2, "test", dense_test), _ratio(cells, flap, 0.2, "test", dense_test)
    wanda20 = _ratio(cells, "wanda-sp", 0.2, "test", dense_test)
    ours50 = _ratio(cells, ours, 0.5, "test", dense_test)
    why = f"stopped after {tp['timeout']} s" if "timeout" in tp else tp.get("error")
    return [
        "## Targets (one-shot, test draw; fxmeta = its default with data, activation + lstsq + uniform)", "",
        f"- 20 %: fxmeta {ours20:.3f} vs FLAP re-implemented {flap20:.3f} (the {label(flap)} variant, chosen on "
        f"validation): {'met' if ours20 <= flap20 else 'missed'}; <= 1.2: {'met' if ours20 <= 1.2 else 'missed'} "
        f"(fxmeta removes {100 * _removed(cells, ours, 0.2):.1f} % there, the baselines 20.0 %). Wanda-sp "
        f"re-implemented: {wanda20:.3f}.",
        f"- 50 %: fxmeta {ours50:.3f}; Torch-Pruning {tp['version']} as real code (its LLM example's recipe, "
        f"`tp_attempt`): " + ("it ran; its perplexity is not scored here yet." if tp["finished"] else
                              f"did not finish on this transformers-5 Llama ({why}), "
                              "so the target (<= half of Torch-Pruning's best) cannot be scored (fxmeta's prune of "
                              "the same model: about 1-4 s)."),
        "- Not measured yet: recovery at an equal token budget, LLM-Pruner-style Taylor + recovery, the "
        "from-scratch control, the GPT-2-style twin, tokens/s.",
    ]


def _removed(cells: list[dict], method: str, fraction: float) -> float:
    values = [c["removed"] for c in cells if c["method"] == method and c["fraction"] == fraction]
    return sum(values) / len(values)


def write_oneshot_report(cells: list[dict], record: dict, targets: dict, tp: dict, args: argparse.Namespace) -> None:
    from .common import mean_se

    dense_val, dense_test = record["oneshot_dense"]["val"], record["oneshot_dense"]["test"]
    head = ["method"] + [f"{int(100 * f)} % removed: val ppl ratio" for f in TARGETS] + \
        [f"{int(100 * f)} %: test ppl ratio" for f in TARGETS] + ["params removed"]
    rows = []
    for method in METHODS:
        row, removed = [label(method)], []
        for split, dense in (("val", dense_val), ("test", dense_test)):
            for f in TARGETS:
                mine = [c for c in cells if c["method"] == method and c["fraction"] == f]
                ratios = [math.exp(c[split] - dense) for c in mine]
                m, se = mean_se(ratios)
                row.append(f"{m:.3f} ± {se:.3f}" if len(ratios) > 1 else f"{m:.3f}")
                if split == "val":
                    removed += [c["removed"] for c in mine]
        row.append(" / ".join(f"{100 * mean_se([c['removed'] for c in cells if c['method'] == method and c['fraction'] == f])[0]:.1f}"
                              for f in TARGETS))
        rows.append(row)
    text = "\n".join([
        "# Language models: one-shot structured pruning (no training)", "",
        header(f"python -m benchmarks.llm --stage oneshot --threads {args.threads}", args.threads,
               "calibration draws 0, 1, 2"), "",
        f"Dense model: `benchmarks/results/llm_base.md` ({record['params']:,} non-embedding parameters); dense "
        f"perplexity {math.exp(dense_val):.3f} (val draw) / {math.exp(dense_test):.3f} (test draw). Each cell: the "
        f"pruned / dense perplexity ratio on a fixed draw of {EVAL_BLOCKS['val']} validation and "
        f"{EVAL_BLOCKS['test']} test blocks of {BLOCK} bytes, mean ± SE over 3 calibration draws "
        f"({CALIB['batches']} x {CALIB['batch']} training blocks). fxmeta prunes to a FLOPs target found by bisection "
        f"so that its l2 prune removes the fraction of non-embedding parameters ({json.dumps(targets)}), with uniform "
        "allocation over MLP channels, GQA groups and the hidden width; the re-implemented baselines remove MLP "
        "channels and GQA groups only, to exactly the fraction (last column: what each really removed, %). "
        "fxmeta's `bias` rows equal its `none` rows: Llama's projections have no bias and fxmeta adds no "
        "parameters (the plan names those layers under `compensation.skipped`); the FLAP re-implementation "
        "adds a bias to `o_proj` / `down_proj`. fxmeta's l2 rows read no data (± 0).", "",
        table(head, rows), "", *targets_section(cells, dense_val, dense_test, tp), ""])
    (RESULTS / "llm.md").write_text(text)
    say(f"wrote {RESULTS / 'llm.md'}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", default="all", choices=("base", "oneshot", "all"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = corpus()
    folder = cache_dir("llm") / f"llama-{hashlib.sha256(json.dumps([MODEL, TRAIN, data['sha256']]).encode()).hexdigest()[:10]}"
    record = train_dense(data, folder, args.threads)
    write_base_report(record, data, args)
    if args.stage == "base":
        return
    cache = cache_dir("llm") / "cells"
    cache.mkdir(exist_ok=True)
    targets_path = folder / "flops_targets.json"
    if not targets_path.is_file():
        targets_path.write_text(json.dumps({str(k): v for k, v in calibrate_targets(folder, data).items()}))
    FLOPS_FOR.update({float(k): v for k, v in json.loads(targets_path.read_text()).items()})
    dense = load_dense(folder)
    record["oneshot_dense"] = {"val": nll(dense, blocks(data["val"], EVAL_BLOCKS["val"], seed=2)),
                               "test": nll(dense, blocks(data["test"], EVAL_BLOCKS["test"], seed=3))}
    cells = []
    for fraction in TARGETS:
        for method in METHODS:
            for seed in args.seeds:
                c = oneshot_cell(folder, data, method, fraction, seed, cache)
                cells.append(c)
                say(f"{label(method)} {fraction:.0%} seed {seed}: val ppl x{math.exp(c['val'] - record['oneshot_dense']['val']):.3f}"
                    f" removed {c['removed']:.3f} ({c['prune_seconds']} s)")
    tp = tp_attempt(folder)
    say(f"Torch-Pruning: {tp}")
    write_oneshot_report(cells, record, FLOPS_FOR, tp, args)


if __name__ == "__main__":
    main()
