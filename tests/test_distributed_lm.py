"""Language-model finetuning on more than one process: DDP and FSDP (torch's fully_shard) under torchrun.

One torchrun launch on 2 gloo ranks runs every distributed case (a tiny LlamaForCausalLM on byte-level
text) and each rank saves what it ended with; the tests compare the ranks' files.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from fxmeta.errors import SpecError
from fxmeta.training.distributed import shard_units
from fxmeta.training.loop import TrainConfig, train

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
TEXT_FILES = ("abc.py", "bisect.py", "colorsys.py", "copy.py", "heapq.py", "keyword.py")

WORKER = '''
import dataclasses, os, sys
from pathlib import Path

import torch
from torch.utils.data import Subset
from transformers import LlamaConfig, LlamaForCausalLM

from fxmeta.errors import SpecError
from fxmeta.training.data import load_data
from fxmeta.training.distill import DistillObjective
from fxmeta.training.loop import TrainConfig, distributed_context, train

torch.set_num_threads(1)
text, out = sys.argv[1], Path(sys.argv[2])
data = load_data(f"text:{text}", block_size=32)
# 16 steps per rank per epoch; an odd validation split, so rank 0 evaluates one batch more than rank 1
data = dataclasses.replace(data, train=Subset(data.train, range(2 * 16 * 4)), val=Subset(data.val, range(4 * 4 + 1)))


def lm():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def run(model, sharding, folder, epochs=2, resume=False):
    config = TrainConfig(epochs=epochs, lr=3e-3, optimizer="adamw", weight_decay=0.01, batch_size=4, device="cpu",
                         progress=False, seed=3, sharding=sharding, checkpoint_dir=str(out / folder), resume=resume)
    result = train(model, data, config)
    return {"state": result.model.state_dict(), "type": type(result.model).__name__,
            "val_ppl": [h["val_ppl"] for h in result.history], "test_ppl": result.test["ppl"]}


with distributed_context("cpu"):  # one process group for all the runs, as `fxmeta transform` holds it
    saved = {"init": lm().state_dict(), "ddp": run(lm(), "ddp", "ddp"), "fsdp": run(lm(), "fsdp", "fsdp")}
    run(lm(), "fsdp", "interrupted", epochs=1)  # stopped after epoch 1 of 2
    perturbed = lm()
    with torch.no_grad():  # resume must not depend on the weights it starts from
        for p in perturbed.parameters():
            p.add_(1.0)
    saved["resumed"] = run(perturbed, "fsdp", "interrupted", resume=True)
    try:  # an objective (distillation here) is refused under FSDP, on every rank alike
        train(lm(), data, TrainConfig(epochs=1, device="cpu", progress=False, sharding="fsdp"), DistillObjective(lm()))
    except SpecError as exc:
        saved["objective_error"] = str(exc)
    torch.save(saved, out / f"rank{os.environ['RANK']}.pt")
'''


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> tuple[dict, dict, Path]:
    """Both ranks' results of one torchrun launch (about 12 s on 2 cores)."""
    tmp = tmp_path_factory.mktemp("distributed_lm")
    text = tmp / "text"
    text.mkdir()
    for name in TEXT_FILES:
        shutil.copy(Path(sysconfig.get_paths()["stdlib"]) / name, text / name)
    (tmp / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp / "worker.py"), str(text), str(tmp)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:  # a hung collective: take the workers down with the launcher
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == 0, err[-4000:]
    load = lambda rank: torch.load(tmp / f"rank{rank}.pt", weights_only=True)  # noqa: E731
    return load(0), load(1), tmp


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_lm_finetune_on_two_gloo_ranks_gives_identical_weights(ranks, sharding):
    r0, r1, _ = ranks
    assert _same(r0[sharding]["state"], r1[sharding]["state"])
    assert not _same(r0[sharding]["state"], r0["init"])  # training changed the weights
    assert r0[sharding]["state"].keys() == r0["init"].keys()  # full tensors under the plain names
    assert r0[sharding]["type"] == "LlamaForCausalLM"  # a plain module, not an FSDP one
    ppl = r0[sharding]["val_ppl"]
    assert all(math.isfinite(p) for p in ppl) and ppl[-1] < ppl[0] < 256  # better than a uniform guess
    assert r0[sharding]["val_ppl"] == r1[sharding]["val_ppl"] and math.isfinite(r0[sharding]["test_ppl"])


def test_fsdp_refuses_an_objective_on_every_rank(ranks):
    r0, r1, _ = ranks
    assert "sharding='ddp'" in r0["objective_error"] and r0["objective_error"] == r1["objective_error"]


def test_fsdp_trains_what_ddp_trains(ranks):
    r0, _, _ = ranks
    ddp, fsdp = r0["ddp"]["state"], r0["fsdp"]["state"]
    assert all(torch.allclose(ddp[k], fsdp[k], atol=1e-4, rtol=1e-3) for k in ddp)


def test_fsdp_resume_is_exact_and_checkpoints_read_like_ddp(ranks):
    r0, r1, tmp = ranks
    assert _same(r0["resumed"]["state"], r0["fsdp"]["state"]) and _same(r1["resumed"]["state"], r0["fsdp"]["state"])
    assert r0["resumed"]["val_ppl"] == r0["fsdp"]["val_ppl"]
    ddp, fsdp, resumed = (torch.load(tmp / d / "last.pt", weights_only=True) for d in ("ddp", "fsdp", "interrupted"))
    assert _same(fsdp["model"], resumed["model"])
    assert all(_same(fsdp["optimizer"]["state"][i], resumed["optimizer"]["state"][i]) for i in fsdp["optimizer"]["state"])
    # the same layout as DDP's: full tensors, the optimizer state keyed by parameter index
    assert fsdp["model"].keys() == ddp["model"].keys()
    assert fsdp["optimizer"]["param_groups"] == ddp["optimizer"]["param_groups"]
    assert fsdp["optimizer"]["state"].keys() == ddp["optimizer"]["state"].keys()
    assert all(fsdp["optimizer"]["state"][i]["exp_avg"].shape == ddp["optimizer"]["state"][i]["exp_avg"].shape
               for i in ddp["optimizer"]["state"])


def test_fsdp_in_one_process_trains_unsharded():
    from torch import nn
    from torch.utils.data import TensorDataset

    from fxmeta.training.data import DataSplits

    ids = torch.randint(0, 32, (64, 9), generator=torch.Generator().manual_seed(0))
    blocks = TensorDataset(ids[:, :-1], ids[:, 1:])
    data = DataSplits(blocks, blocks, blocks, num_classes=32, in_channels=0, input_shape=(8,), description="ids",
                      task="causal-lm")

    def run(sharding: str) -> dict:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Embedding(32, 8), nn.Linear(8, 32))
        config = TrainConfig(epochs=2, lr=0.1, batch_size=16, device="cpu", progress=False, sharding=sharding)
        return train(model, data, config).model.state_dict()

    assert _same(run("fsdp"), run("ddp"))


def test_sharding_is_validated_and_units_are_the_blocks():
    from transformers import LlamaConfig, LlamaForCausalLM

    with pytest.raises(SpecError, match="sharding"):
        TrainConfig(sharding="zero3")
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                         num_attention_heads=2, num_key_value_heads=1))
    assert shard_units(model) == list(model.model.layers)
