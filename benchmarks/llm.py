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
import itertools
import json
import math
import sys
import sysconfig
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from .common import cache_dir, header, mean_se, say, table
from .llm_baselines import non_embedding_params, reimplemented, tp_attempt, tp_mlp
from .llm_budget import budget, scratch, scratch_at
from .llm_recovery import add_lora, lr_at, prepare_on_tokens, recover, recovery_section
from .llm_speed import speed_section
from .llm_twin import twin

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

    if config.get("model_type") == "gpt2":  # the GPT-2-style twin (benchmarks.llm_twin)
        return tf.GPT2LMHeadModel(tf.GPT2Config(**{k: v for k, v in config.items() if k != "model_type"}))
    return tf.LlamaForCausalLM(tf.LlamaConfig(**config))


def train_dense(data: dict, folder: Path, threads: int, config: dict = MODEL, tokens: int | None = None,
                train: dict = TRAIN) -> dict:
    """Train a dense model (``config``; on ``tokens`` training tokens, default 20x its parameters; the
    recipe ``train``) once; returns its record (the weights are in ``folder``)."""
    record_path = folder / "record.json"
    if record_path.is_file() and (folder / "model.safetensors").is_file():
        return json.loads(record_path.read_text())
    torch.manual_seed(train["seed"])
    model = build_model(config)
    params = non_embedding_params(model)
    tokens = tokens or TOKENS_PER_PARAM * params
    steps = math.ceil(tokens / (train["batch"] * BLOCK))
    train_rows = blocks(data["train"])
    val_rows = blocks(data["val"], train["eval_blocks"], seed=1)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": train["weight_decay"]},
                             {"params": other, "weight_decay": 0.0}], lr=train["lr"], betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(train["seed"])
    order = torch.randperm(len(train_rows), generator=gen)
    curve, t0, position = [], time.perf_counter(), 0
    say(f"dense {type(model).__name__}: {params} non-embedding parameters, "
        f"{steps} steps of {train['batch']}x{BLOCK} = "
        f"{steps * train['batch'] * BLOCK / 1e6:.1f}M tokens ({len(train_rows) * BLOCK / 1e6:.1f}M in the train split)")
    for step in range(steps):
        if position + train["batch"] > len(order):
            order, position = torch.randperm(len(train_rows), generator=gen), 0
        rows = train_rows[order[position:position + train["batch"]]]
        position += train["batch"]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, train["lr"], train["warmup"])
        model.train()
        logits = model(rows[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % train["eval_every"] == 0 or step + 1 == steps:
            val = nll(model, val_rows)
            curve.append({"step": step + 1, "tokens": (step + 1) * train["batch"] * BLOCK, "train_loss": loss.item(),
                          "val_loss": val, "seconds": round(time.perf_counter() - t0, 1)})
            say(f"step {step + 1}/{steps}: train {loss.item():.4f} val {val:.4f} nats/byte "
                f"({time.perf_counter() - t0:.0f} s)")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    record = {"params": params, "tokens": steps * train["batch"] * BLOCK, "steps": steps, "curve": curve,
              "minutes": (time.perf_counter() - t0) / 60, "threads": threads, "config": config, "train": train,
              "val_loss": nll(model, blocks(data["val"])), "data": {k: data[k] for k in ("files", "sha256", "python")}}
    record_path.write_text(json.dumps(record, indent=1))
    return record


def load_dense(folder: Path):
    import transformers as tf

    return tf.AutoModelForCausalLM.from_pretrained(folder).eval()


# ----------------------------------------------------------------------- one-shot pruning

TARGETS = (0.2, 0.3, 0.5)  # fractions of non-embedding parameters removed
CALIB = dict(batches=8, batch=16)  # calibration: 8 x 16 blocks of the training split (16k tokens)
EVAL_BLOCKS = dict(val=512, test=2048)  # fixed draws of each split's blocks (65k / 262k tokens)
FXMETA_ROWS = [(imp, comp) for imp in ("l2", "activation", "taylor") for comp in ("none", "bias", "lstsq")]


def fxmeta_spec(method: str, speedup: float, seed: int):
    """The prune a ``fxmeta:IMPORTANCE:COMPENSATION[:ALLOCATION]`` row names (allocation default uniform)."""
    from fxmeta.pruning.spec import PruneSpec

    _, imp, comp, *alloc = method.split(":")
    return PruneSpec(speedup, importance=imp, compensate=comp, allocation=(alloc or ["uniform"])[0], seed=seed)


def calibration(data: dict, seed: int) -> list:
    rows = blocks(data["train"], CALIB["batches"] * CALIB["batch"], seed=100 + seed)
    return [(r[:, :-1], r[:, 1:]) for r in rows.split(CALIB["batch"])]


def oneshot_cell(dense_folder: Path, data: dict, method: str, fraction: float, seed: int, cache: Path) -> dict:
    """One method at one target and calibration seed: validation and test loss, params removed."""
    from .common import cached_cell

    parts = {"stage": "oneshot", "model": dense_folder.name, "method": method, "fraction": fraction, "seed": seed,
             "calib": CALIB, "eval": EVAL_BLOCKS}

    def run() -> dict:
        import fxmeta

        model = load_dense(dense_folder)
        before = non_embedding_params(model)
        calib = calibration(data, seed)
        t0 = time.perf_counter()
        if method.startswith("fxmeta"):
            spec = fxmeta_spec(method, FLOPS_FOR.get(fraction, 1 / (1 - fraction)), seed)
            model = fxmeta.prune(model, calib[0][0][:1], spec=spec, calibration=calib).module.eval()
            removed = before - non_embedding_params(model)
        elif method.startswith("tp-"):
            removed = tp_mlp(model, calib, fraction, method[3:])
        else:
            _, removed, _ = reimplemented(model, calib, fraction, method, seed)
        seconds = time.perf_counter() - t0
        return {"removed": removed / before, "prune_seconds": round(seconds, 2),
                "val": nll(model, blocks(data["val"], EVAL_BLOCKS["val"], seed=2)),
                "test": nll(model, blocks(data["test"], EVAL_BLOCKS["test"], seed=3))}

    return cached_cell(cache, parts, run)


FLOPS_FOR: dict[float, float] = {}  # fxmeta's FLOPs target per params fraction (filled by calibrate_targets)


# ------------------------------------------------------------------------------- recovery

RECOVERY = dict(fraction_of_pretraining=0.05, lr=1e-3, batch=32, warmup=10, seed=0)
RECOVERY_LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)  # every row's peak learning rate is chosen from these on validation (seed 0)
RECOVERY_TARGETS = (0.2, 0.5)
RECOVERY_METHODS = ("fxmeta:activation:lstsq", "fxmeta:activation:lstsq+distill", "fxmeta:activation:lstsq:global-mean+distill",
                    "fxmeta:l2:none", "prepare", "flap-uniform", "wanda-sp", "llm-pruner+lora",
                    "tp-taylor")  # tp-taylor: Torch-Pruning's better one-shot row on validation


def recovery_cell(dense_folder: Path, data: dict, method: str, fraction: float, record: dict, cache: Path,
                  seed: int = 0, lr: float = RECOVERY["lr"], budget: float = RECOVERY["fraction_of_pretraining"]) -> dict:
    """Prune (calibration draw ``seed``), then recover on ``budget`` of the pretraining tokens (data order from
    ``seed``) at peak learning rate ``lr``; validation and test loss. ``+distill``: the KL to the dense
    model; ``+lora``: LoRA adapters, the pruned weights frozen."""
    from .common import cached_cell

    steps = math.ceil(budget * record["tokens"] / (RECOVERY["batch"] * BLOCK))
    parts = {"stage": "recovery", "model": dense_folder.name, "method": method, "fraction": fraction,
             "recovery": {**RECOVERY, "lr": lr, "fraction_of_pretraining": budget}, "steps": steps, "calib": CALIB, "eval": EVAL_BLOCKS,
             **({"seed": seed} if seed else {})}

    def run() -> dict:
        import fxmeta
        from fxmeta.pruning.spec import PruneSpec

        torch.manual_seed(RECOVERY["seed"] + seed)
        model = load_dense(dense_folder)
        before = non_embedding_params(model)
        calib = calibration(data, seed)
        masked = None
        name, _, extra = method.partition("+")
        t0 = time.perf_counter()
        if name == "prepare":  # fxmeta's prepare stage spends the budget before the prune it trains for (l2)
            prepare_on_tokens(model, blocks(data["train"]), steps, lr, RECOVERY["batch"], RECOVERY["seed"] + 7 + 1000 * seed,
                              FLOPS_FOR[fraction])
            model = fxmeta.prune(model.eval(), calib[0][0][:1], spec=PruneSpec(FLOPS_FOR[fraction], allocation="uniform"))
            model = model.module.eval()
            removed = before - non_embedding_params(model)
        elif name.startswith("fxmeta"):
            spec = fxmeta_spec(name, FLOPS_FOR[fraction], seed)
            model = fxmeta.prune(model, calib[0][0][:1], spec=spec, calibration=calib).module.eval()
            removed = before - non_embedding_params(model)
        elif name.startswith("tp-"):
            removed = tp_mlp(model, calib, fraction, name[3:])
        else:
            _, removed, masked = reimplemented(model, calib, fraction, name, seed)
        if extra == "lora":
            add_lora(model, masked)
        if name != "prepare":  # the others spend the budget after the prune
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(RECOVERY["seed"] + 7 + 1000 * seed)
            recover(model, blocks(data["train"]), steps, lr, RECOVERY["batch"], RECOVERY["warmup"], gen,
                    teacher=load_dense(dense_folder) if extra == "distill" else None, masked=masked)
        return {"removed": removed / before, "recovery_seconds": round(time.perf_counter() - t0, 1),
                "val": nll(model, blocks(data["val"], EVAL_BLOCKS["val"], seed=2)),
                "test": nll(model, blocks(data["test"], EVAL_BLOCKS["test"], seed=3))}

    return cached_cell(cache, parts, run)


def chosen_lrs(dense_folder: Path, data: dict, record: dict, cache: Path) -> dict[tuple[str, float], float]:
    """Per recovery row and target, the peak learning rate of ``RECOVERY_LRS`` with the lowest validation
    loss after recovery (calibration draw and data order 0)."""
    out = {}
    for fraction, method in itertools.product(RECOVERY_TARGETS, RECOVERY_METHODS):
        tried = {lr: recovery_cell(dense_folder, data, method, fraction, record, cache, 0, lr)["val"]
                 for lr in RECOVERY_LRS}
        out[(method, fraction)] = min(tried, key=tried.get)
        say(f"recovery lr for {method} {fraction:.0%}: " + ", ".join(f"{lr:g} val {v:.4f}" for lr, v in tried.items()))
    return out


# the from-scratch control of the 50 % row: the dense recipe at the pruned model's size (267,936 non-embedding
# parameters; fxmeta's 50 % prune keeps 267,512)
SCRATCH = dict(MODEL, hidden_size=96, intermediate_size=224, num_attention_heads=3, num_key_value_heads=1)


def scratch_control(data: dict, record: dict, threads: int) -> dict:
    """The control: a dense model of about the pruned size trained from scratch by the dense recipe on as
    many tokens as the pruned one saw in all (its pretraining plus the recovery); test loss on the draw."""
    steps = math.ceil(RECOVERY["fraction_of_pretraining"] * record["tokens"] / (RECOVERY["batch"] * BLOCK))
    tokens = record["tokens"] + steps * RECOVERY["batch"] * BLOCK
    return scratch(sys.modules[__name__], data, tokens, TRAIN["lr"], threads)  # the dense recipe at that length


def calibrate_targets(dense_folder: Path, data: dict, count: Callable = non_embedding_params) -> dict[float, float]:
    """The FLOPs speed-up at which fxmeta's l2 prune removes each fraction of the non-embedding
    parameters (``count``; bisection on the parameter count alone: no data, no scores)."""
    import fxmeta
    from fxmeta.pruning.spec import PruneSpec

    model = load_dense(dense_folder)
    x = blocks(data["train"], 1)[:, :-1]
    before = count(model)
    out = {}
    for fraction in TARGETS:
        lo, hi = 1.0, 8.0
        for _ in range(7):
            mid = (lo + hi) / 2
            pruned = fxmeta.prune(model, x, spec=PruneSpec(mid, allocation="uniform"), check=False).module
            if 1 - count(pruned) / before < fraction:
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


METHODS = [f"fxmeta:{imp}:{comp}" for imp, comp in FXMETA_ROWS] + [
    "fxmeta:activation:lstsq:global", "fxmeta:activation:lstsq:global-mean",  # per-layer widths from the scores
    "flap", "flap-uniform", "wanda-sp", "llm-pruner", "tp-magnitude", "tp-taylor", "random"]
LABELS = {"flap": "FLAP (re-implemented), adaptive structure", "flap-uniform": "FLAP (re-implemented), uniform",
          "wanda-sp": "Wanda-sp (re-implemented)", "llm-pruner": "LLM-Pruner (re-implemented), Taylor",
          "tp-magnitude": "Torch-Pruning (real code), magnitude, MLP channels only",
          "tp-taylor": "Torch-Pruning (real code), Taylor, MLP channels only", "random": "random",
          "prepare": "fxmeta prepare (l2; the budget spent before the prune, none after)"}


def label(method: str) -> str:
    if method.startswith("fxmeta"):
        _, imp, comp, *alloc = method.split(":")
        return f"fxmeta {imp} + {comp}" + (f", {alloc[0]} allocation" if alloc else "")
    return LABELS[method]


def _ratio(cells: list[dict], method: str, fraction: float, split: str, dense: float) -> float:
    return mean_se([math.exp(c[split] - dense) for c in cells if c["method"] == method and c["fraction"] == fraction])[0]


def tp_choice(cells: list[dict], fraction: float, dense_val: float) -> str:
    """Torch-Pruning's importance with the better one-shot validation perplexity at ``fraction``."""
    return min(("tp-magnitude", "tp-taylor"), key=lambda m: _ratio(cells, m, fraction, "val", dense_val))


def targets_section(cells: list[dict], dense_val: float, dense_test: float, tp: dict) -> list[str]:
    """The issue's one-shot targets, on test, with every choice (the FLAP variant, Torch-Pruning's importance)
    made on validation."""
    ours = "fxmeta:activation:lstsq"  # the product's default with data (CALIBRATED), not picked here
    flap = min(("flap", "flap-uniform"), key=lambda m: _ratio(cells, m, 0.2, "val", dense_val))
    ours20, flap20 = _ratio(cells, ours, 0.2, "test", dense_test), _ratio(cells, flap, 0.2, "test", dense_test)
    wanda20 = _ratio(cells, "wanda-sp", 0.2, "test", dense_test)
    ours50 = _ratio(cells, ours, 0.5, "test", dense_test)
    tp_best = tp_choice(cells, 0.5, dense_val)
    tp50 = _ratio(cells, tp_best, 0.5, "test", dense_test)
    why = f"stopped after {tp['timeout']} s" if "timeout" in tp else tp.get("error")
    if tp.get("stuck_in"):
        why += ", still building its dependency groups: " + "; ".join(f"`{f}`" for f in tp["stuck_in"])
    return [
        "## Targets (one-shot, test draw; fxmeta = its default with data, activation + lstsq + uniform)", "",
        f"- 20 %: fxmeta {ours20:.3f} vs FLAP re-implemented {flap20:.3f} (the {label(flap)} variant, chosen on "
        f"validation): {'met' if ours20 <= flap20 else 'missed'}; <= 1.2: {'met' if ours20 <= 1.2 else 'missed'} "
        f"(fxmeta removes {100 * _removed(cells, ours, 0.2):.1f} % there, the baselines 20.0 %). Wanda-sp "
        f"re-implemented: {wanda20:.3f}.",
        f"- 50 %: fxmeta {ours50:.3f} vs half of Torch-Pruning's best as real code ({label(tp_best)}, chosen on "
        f"validation: {tp50:.3f} / 2 = {tp50 / 2:.3f}): {'met' if ours50 <= tp50 / 2 else 'missed'}. Torch-Pruning "
        f"{tp['version']} runs on the MLP channels alone: its LLM example's recipe on the whole model (`tp_attempt`, "
        "heads and hidden width too) " + ("ran." if tp["finished"] else f"did not finish on this transformers-5 "
                                          f"Llama ({why}; reported upstream for GQA models: VainF/Torch-Pruning#527)."),
        "- After recovery and tokens/s: the sections below. The GPT-2-style twin: `llm_twin.md`.",
    ]


def _removed(cells: list[dict], method: str, fraction: float) -> float:
    values = [c["removed"] for c in cells if c["method"] == method and c["fraction"] == fraction]
    return sum(values) / len(values)


def write_oneshot_report(cells: list[dict], record: dict, targets: dict, tp: dict, args: argparse.Namespace,
                         recovered: list[dict], scratch: dict | None = None, speed: Sequence[str] = ()) -> None:
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
        "# Language models: structured pruning, one-shot and after recovery", "",
        header(f"python -m benchmarks.llm --stage {args.stage} --threads {args.threads}", args.threads,
               "calibration draws 0, 1, 2"), "",
        f"Dense model: `benchmarks/results/llm_base.md` ({record['params']:,} non-embedding parameters); dense "
        f"perplexity {math.exp(dense_val):.3f} (val draw) / {math.exp(dense_test):.3f} (test draw), "
        f"{dense_val / math.log(2):.3f} / {dense_test / math.log(2):.3f} bits per byte (a token is a byte here, so a "
        "ratio r adds log2 r bits per byte). Each cell: the "
        f"pruned / dense perplexity ratio on a fixed draw of {EVAL_BLOCKS['val']} validation and "
        f"{EVAL_BLOCKS['test']} test blocks of {BLOCK} bytes, mean ± SE over 3 calibration draws "
        f"({CALIB['batches']} x {CALIB['batch']} training blocks). fxmeta prunes to a FLOPs target found by bisection "
        f"so that its l2 prune removes the fraction of non-embedding parameters ({json.dumps(targets)}), with uniform "
        "allocation over MLP channels, GQA groups and the hidden width (rows marked `global` / `global-mean`: units "
        "ranked across all groups by their scores over the group's largest / mean, so widths differ per layer); "
        "the re-implemented baselines remove MLP "
        "channels and GQA groups only, to exactly the fraction, Torch-Pruning's real code MLP channels only, "
        "in multiples of 4 (last column: what each really removed, %). "
        "fxmeta's `bias` rows equal its `none` rows: Llama's projections have no bias and fxmeta adds no "
        "parameters (the plan names those layers under `compensation.skipped`); the FLAP re-implementation "
        "adds a bias to `o_proj` / `down_proj`. fxmeta's l2 rows read no data (± 0).", "",
        table(head, rows), "", *targets_section(cells, dense_val, dense_test, tp), "",
        *(recovery_section(sys.modules[__name__], recovered, dense_test, recovered[0]["steps"], scratch, record["params"])
          if recovered else []), *speed])
    (RESULTS / "llm.md").write_text(text)
    say(f"wrote {RESULTS / 'llm.md'}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", default="all", choices=("base", "oneshot", "recovery", "all", "budget", "twin"),
                   help="budget: pruned + recovered vs from scratch as the training budget grows (llm_budget.md); "
                        "twin: the GPT-2-style twin, one-shot (llm_twin.md)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = corpus()
    folder = cache_dir("llm") / f"llama-{hashlib.sha256(json.dumps([MODEL, TRAIN, data['sha256']]).encode()).hexdigest()[:10]}"
    if args.stage == "twin":
        return twin(sys.modules[__name__], data, args.threads)
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
    if args.stage == "budget":
        return budget(sys.modules[__name__], folder, data, record, args.threads)
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
    for fraction in RECOVERY_TARGETS:  # the recovery's Torch-Pruning row is its better one-shot importance on validation
        pick = tp_choice(cells, fraction, record["oneshot_dense"]["val"])
        if pick not in RECOVERY_METHODS:
            raise SystemExit(f"Torch-Pruning's better importance on validation at {fraction:.0%} is {pick}, not the "
                             "recovery row's: change RECOVERY_METHODS")
    tp = tp_attempt(folder, BLOCK)
    say(f"Torch-Pruning: {tp}")
    recovered = []
    if args.stage in ("recovery", "all"):
        lrs = chosen_lrs(folder, data, record, cache)
        for fraction, method, seed in itertools.product(RECOVERY_TARGETS, RECOVERY_METHODS, args.seeds):
            c = recovery_cell(folder, data, method, fraction, record, cache, seed, lrs[(method, fraction)])
            recovered.append(c)
            say(f"recovered {method} {fraction:.0%} seed {seed}: test ppl "
                f"x{math.exp(c['test'] - record['oneshot_dense']['test']):.3f} ({c['recovery_seconds']} s)")
    scratch = scratch_control(data, record, args.threads) if args.stage in ("recovery", "all") else None
    if scratch:  # and the same size trained from scratch on the recovery's tokens alone (llm_budget)
        scratch["equal"] = scratch_at(sys.modules[__name__], data, record, RECOVERY["fraction_of_pretraining"],
                                      args.threads)[1]
    speed = speed_section(sys.modules[__name__], folder, data) if args.stage in ("recovery", "all") else []
    write_oneshot_report(cells, record, FLOPS_FOR, tp, args, recovered, scratch, speed)


if __name__ == "__main__":
    main()
