"""The two fuzzers: random DAGs against an independent oracle, and damaged copies of valid files.

Shared by ``tests/test_fuzz.py`` (a fast slice in the default suite, the full size under
``-m slow``) and ``python -m benchmarks.fuzz`` (full size, writes benchmarks/results/fuzz.md).

DAG oracle: every removable unit beyond the strongest quarter of each group is killed
(its weight slices zeroed), so the original already computes what the masked original
would; the model is then pruned with the self-check off and the pruned output must equal
the original's on fresh inputs, for every tensor leaf of the output. Nothing of the
project's self-check is used.

Corruption: a valid ``pruned.pt`` / ``metanet.pt`` gets random byte flips, zeroed ranges
or truncations; loading each copy must raise an ``FxmetaError`` (one clear line) or give
exactly the original model. Any other exception is a crash, any other model a silent load.
"""
from __future__ import annotations

import math
import os
import random
import re
from dataclasses import dataclass, field

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from fxmeta.analysis.channels import analyze
from fxmeta.errors import FxmetaError, PruningError
from fxmeta.pruning.pruner import prune

from helpers import RandomNet, random_nets, randomize_bn


class Variant(nn.Module):
    """A RandomNet behind a stem with tied 1x1 convs and an index_select by a buffer, returning a
    tensor, a dict or nested tuples."""

    def __init__(self, net: RandomNet, in_ch: int, out: str, tied: bool, index: bool) -> None:
        super().__init__()
        self.net, self.out, self.tied, self.index = net, out, tied, index
        self.stem = nn.Conv2d(in_ch, in_ch, 1)
        if tied:
            self.a, self.b = nn.Conv2d(in_ch, in_ch, 1), nn.Conv2d(in_ch, in_ch, 1)
            self.b.weight = self.a.weight
        self.register_buffer("perm", torch.arange(in_ch).flip(0))

    def forward(self, x):
        h = torch.relu(self.stem(x))
        if self.tied:
            h = torch.relu(self.a(h)) + torch.relu(self.b(h))
        if self.index:
            h = torch.index_select(h, 1, self.perm)
        y = self.net(h)
        if self.out == "dict":
            return {"logits": y, "aux": [y.sum(1), {"again": y * 2}]}
        if self.out == "tuple":
            return y, ((y.mean(1),), y)
        return y


@st.composite
def variants(draw):
    net, in_ch = draw(random_nets())
    return Variant(net, in_ch, draw(st.sampled_from(["tensor", "dict", "tuple"])), draw(st.booleans()),
                   draw(st.booleans())), in_ch


def _leaves(value) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]


def kill_removable_units(model: nn.Module, x: torch.Tensor, min_keep: float) -> None:
    """Zero every slice of all but the strongest units of each group (tied parameters too): those
    channels are dead, so removing them must leave the model's output exactly as it is."""
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for g in analyze(model, x).groups:
            if not g.prunable:
                continue
            dead = torch.arange(max(1, math.ceil(min_keep * g.units)), g.units)
            for name, dim, index in g.slices:
                params[name].movedim(dim, 0)[index[dead].flatten()] = 0.0


def dag_case(model: nn.Module, in_ch: int, speedup: float, round_to: int | None) -> str:
    """'ok', 'skipped: ...' (target out of reach, said so) or raises AssertionError (oracle failure)."""
    model = randomize_bn(model).eval()
    x = torch.randn(2, in_ch, 6, 6)
    kill_removable_units(model, x, min_keep=0.25)
    for _attempt in range(3):
        try:
            result = prune(model, x, speedup=speedup, round_to=round_to, min_keep=0.25, check=False)
            break
        except PruningError as exc:
            reachable = re.search(r"at most ([0-9.]+)x", str(exc))
            if reachable is None:
                assert "no prunable channel groups" in str(exc), str(exc)
                assert not any(g.prunable for g in analyze(model, x).groups)
                return "skipped: nothing prunable"
            assert float(reachable.group(1)) < speedup
            speedup = max(1.0, float(reachable.group(1)) * 0.98)
    else:
        return "skipped: target out of reach"
    assert result.speedup >= speedup
    with torch.no_grad():
        for inp in (x, torch.randn(3, in_ch, 6, 6)):
            want, got = _leaves(model(inp)), _leaves(result.module(inp))
            assert len(want) == len(got)
            for w, g in zip(want, got):
                assert w.shape == g.shape and torch.allclose(g, w, rtol=1e-4, atol=1e-5)
    if getattr(model, "tied", False):
        assert result.module.a.weight is result.module.b.weight, "tied weights were untied"
    return "ok"


@dataclass
class Tally:
    examples: int = 0
    outcomes: dict = field(default_factory=dict)

    def add(self, outcome: str) -> None:
        self.examples += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


def run_dags(examples: int, seed: int, tally: Tally) -> None:
    """Run ``examples`` random DAG cases (hypothesis, derandomized by ``seed``); raises on the first failure."""

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(variants(), st.floats(1.05, 3.0), st.sampled_from([None, 2]))
    def case(v, speedup, round_to):
        model, in_ch = v
        tally.add(dag_case(model, in_ch, speedup, round_to))

    from hypothesis import seed as hseed

    hseed(seed)(case)()


# ------------------------------------------------------------------------------- corruption
def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    kind = rng.choice(["flip", "flip", "zero", "truncate"])
    buf = bytearray(data)
    if kind == "truncate":
        n = rng.randrange(0, len(buf))
        return bytes(buf[:n]), f"truncate to {n}"
    if kind == "zero":
        start = rng.randrange(len(buf))
        n = rng.randint(1, 64)
        buf[start:start + n] = bytes(len(buf[start:start + n]))
        return bytes(buf), f"zero {n} at {start}"
    spots = [rng.randrange(len(buf)) for _ in range(rng.randint(1, 8))]
    for i in spots:
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf), f"flip {len(spots)} bits"


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                        and torch.equal(a[k], b[k]) for k in a)


def corrupt_case(path: str, data: bytes, load, reference: dict, rng: random.Random, scratch: str) -> str:
    """'error' (a clean FxmetaError), 'same' (loaded exactly the original) or a failure description."""
    mutated, how = mutate(data, rng)
    with open(scratch, "wb") as f:
        f.write(mutated)
    try:
        module = load(scratch)
    except FxmetaError:
        return "error"
    except Exception as exc:  # noqa: BLE001 - this is what the fuzz looks for
        return f"crash ({how}): {type(exc).__name__}: {str(exc)[:200]}"
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)
    return "same" if _same_state(module.state_dict(), reference) else f"silent wrong load ({how})"


# -------------------------------------------------------------------------- damaged inputs
# What users hand the CLI as weights: a state dict (SPEC@weights.pt) or a Hugging Face folder.
# Each damaged input must fail with an FxmetaError before any work, or load exactly what it holds.


def damage_state(state: dict, rng: random.Random) -> tuple[dict | object, str, bool]:
    """(a damaged copy of ``state``, what was done, whether the copy is still valid)."""
    state = {k: v.clone() for k, v in state.items()}
    floats = [k for k, v in state.items() if v.is_floating_point() and v.numel()]
    k = rng.choice(floats)
    kind = rng.choice(["nan", "inf", "float16", "int64", "float64", "missing", "extra", "reshape", "not a tensor",
                       "ddp prefix", "not a dict"])
    if kind in ("nan", "inf"):
        state[k].view(-1)[rng.randrange(state[k].numel())] = float(kind)
    elif kind in ("float16", "int64", "float64"):
        state[k] = state[k].to(getattr(torch, kind))
    elif kind == "missing":
        del state[k]
    elif kind == "extra":
        state[k + "_extra"] = torch.zeros(3)
    elif kind == "reshape":
        state[k] = state[k].reshape(-1)[:-1] if state[k].numel() > 1 else torch.zeros(2)
    elif kind == "not a tensor":
        state[k] = [1, 2, 3]
    elif kind == "ddp prefix":  # what DDP saves: valid, loads as the plain names
        return {f"module.{n}": v for n, v in state.items()}, kind, True
    else:
        return list(state.values()), kind, False
    return state, f"{kind} {k}", False


def damaged_state_case(spec: str, reference: dict, resolve, rng: random.Random, scratch: str) -> str:
    """'error', 'same' (a valid variant loaded exactly) or a failure description."""
    damaged, how, valid = damage_state(reference, rng)
    torch.save(damaged, scratch)
    try:
        module = resolve(f"{spec}@{scratch}")
    except FxmetaError:
        return f"crash ({how}): a valid input refused" if valid else "error"
    except Exception as exc:  # noqa: BLE001 - this is what the fuzz looks for
        return f"crash ({how}): {type(exc).__name__}: {str(exc)[:200]}"
    finally:
        os.unlink(scratch)
    if not valid:
        return f"silent wrong load ({how})"
    return "same" if _same_state(module.state_dict(), reference) else f"silent wrong load ({how})"


HF_CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 16,
             "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
             "vocab_size": 32}


def damaged_hf_case(folder: str, rng: random.Random) -> str:
    """A Hugging Face folder with one thing wrong: 'error', or a failure description."""
    import json
    import shutil

    import transformers as tf

    from fxmeta.io.files import resolve_model

    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    config = dict(HF_CONFIG)
    kind = rng.choice(["no weights", "bad json", "unknown model_type", "not a model class", "unknown class",
                       "wrong shapes", "hostile bin", "truncated safetensors", "config not a dict"])
    weights = True
    if kind == "no weights":
        weights = False
    elif kind == "unknown model_type":
        config["model_type"] = "no-such-model"
    elif kind == "not a model class":
        config["architectures"] = ["LlamaConfig"]
    elif kind == "unknown class":
        config["architectures"] = ["LlamaForMagic"]
    if weights:
        source = dict(HF_CONFIG, hidden_size=8 if kind == "wrong shapes" else 16)
        tf.LlamaForCausalLM(tf.LlamaConfig(**{k: v for k, v in source.items() if k != "model_type"})).save_pretrained(
            folder)
    path = os.path.join(folder, "config.json")
    if kind == "bad json":
        open(path, "w").write("{not json")
    elif kind == "config not a dict":
        open(path, "w").write("[1, 2]")
    else:
        open(path, "w").write(json.dumps(config))
    if kind == "hostile bin":
        os.unlink(os.path.join(folder, "model.safetensors"))

        class Evil:
            def __reduce__(self):
                return (print, ("never",))

        torch.save({"w": Evil()}, os.path.join(folder, "pytorch_model.bin"))
    elif kind == "truncated safetensors":
        weights_file = os.path.join(folder, "model.safetensors")
        data = open(weights_file, "rb").read()
        open(weights_file, "wb").write(data[: rng.randrange(8, len(data))])
    try:
        resolve_model(f"hf:{folder}")
    except FxmetaError:
        return "error"
    except Exception as exc:  # noqa: BLE001 - this is what the fuzz looks for
        return f"crash ({kind}): {type(exc).__name__}: {str(exc)[:200]}"
    return f"silent wrong load ({kind})"
