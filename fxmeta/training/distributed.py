"""Multi-process training: the torchrun process group, sharded metrics, DDP buffer averaging, and
FSDP (torch's ``fully_shard``) with full-state checkpoints in DDP's format.

FSDP shards a copy of the model: every entry of an ``nn.ModuleList`` that holds parameters
(a transformer's blocks: ``model.model.layers`` of a Hugging Face causal LM) becomes one unit,
the root the rest (``shard_units``). Checkpoints and best-epoch weights are full state dicts
gathered from the shards, in the same format as DDP's (the optimizer state keyed by parameter
index), so a run can resume under either.
"""
from __future__ import annotations

import copy
import itertools
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from .data import ShardSampler


@dataclass
class DistContext:
    """Where this process sits in a torchrun job (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@contextmanager
def distributed_context(device: str = "auto") -> Iterator[DistContext]:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU).

    A group that is already initialised is used as is and left open."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        yield DistContext()
        return
    if dist.is_initialized():
        yield DistContext(dist.get_rank(), dist.get_world_size(), local_rank)
        return
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        yield DistContext(dist.get_rank(), dist.get_world_size(), local_rank)
        # Leave together: a rank that tears the group down while another still uses it
        # (rank 0 writing its last checkpoint, say) can abort at exit under gloo.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def is_sharded(loader: DataLoader) -> bool:
    return isinstance(loader.sampler, (ShardSampler, DistributedSampler))


def reduce_sums(sums: torch.Tensor, count: int, loader: DataLoader) -> list[float]:
    """Per-sample means of ``sums`` and the sample count, over all ranks when sharded."""
    totals = torch.cat([sums, sums.new_tensor([count])])
    if dist.is_initialized() and is_sharded(loader):
        dist.all_reduce(totals)
    *values, n = totals.tolist()
    return [v / max(n, 1.0) for v in values] + [int(n)]


def average_buffers(model: nn.Module, world: int) -> None:
    """Make BatchNorm statistics identical on every rank (each rank saw different batches)."""
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf)
            buf.div_(world)
        else:
            dist.broadcast(buf, 0)


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The submodules ``sharding="fsdp"`` shards as units of their own: every entry of an
    ``nn.ModuleList`` that holds parameters (a transformer's blocks), outermost lists only.
    Each unit's parameters are all-gathered for its forward and freed after; the root's unit
    holds everything else (embeddings, final norm, head)."""
    units: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.ModuleList):
                units.extend(m for m in child if next(m.parameters(), None) is not None and
                             all(m is not u for u in units))
            else:
                visit(child)

    visit(model)
    return units


def fully_shard_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """A copy of ``model`` sharded with ``fully_shard`` over all ranks, starting from rank 0's
    weights as DDP does; ``model`` itself is left as it is."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    net = copy.deepcopy(model).to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    for tensor in itertools.chain(net.parameters(), net.buffers()):
        dist.broadcast(tensor.detach(), 0)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for unit in shard_units(net):  # bottom-up: a unit is sharded before the root that holds it
        fully_shard(unit, mesh=mesh)
    return fully_shard(net, mesh=mesh)


def is_fsdp(module: nn.Module) -> bool:
    if not (dist.is_available() and dist.is_initialized()):
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def missing_steps(model: nn.Module, loader: DataLoader, device: torch.device) -> int:
    """How many batches fewer than the busiest rank this rank evaluates with a sharded model."""
    if not (is_sharded(loader) and is_fsdp(model)):
        return 0
    steps = torch.tensor([len(loader)], device=device)
    dist.all_reduce(steps, op=dist.ReduceOp.MAX)
    return int(steps) - len(loader)


def reshard(model: nn.Module) -> None:
    """Free FSDP's gathered parameters after forwards without a backward (evaluation): the root
    unit keeps its own gathered, and its gathered parameters are not the ones the optimizer holds."""
    if is_fsdp(model):
        for module in model.modules():
            if is_fsdp(module):
                module.reshard()


def _full_options(**kw: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with full tensors on every rank: under FSDP gathered from the shards
    one tensor at a time into CPU memory, so the device never holds the whole model."""
    if not is_fsdp(module):
        return module.state_dict()
    from torch.distributed.tensor import DTensor

    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu()
            for k, v in module.state_dict().items()}


def _param_names(module: nn.Module) -> tuple[list[str], dict[str, int]]:
    """Each parameter's name by optimizer index, and every name (aliases too) to its index."""
    index = {id(p): i for i, p in enumerate(module.parameters())}
    return ([name for name, _ in module.named_parameters()],
            {name: index[id(p)] for name, p in module.named_parameters(remove_duplicate=False)})


def gather_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()``; under FSDP the full state gathered on rank 0 (other ranks get
    ``{}``), renumbered from parameter names to indices so that it reads like DDP's."""
    if not is_fsdp(module):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    named = get_optimizer_state_dict(module, optimizer, options=_full_options(cpu_offload=True))
    if not named:
        return {}
    _, index = _param_names(module)
    return {"state": {index[name]: value for name, value in named["state"].items()},
            "param_groups": [{**g, "params": [index[name] for name in g["params"]]} for g in named["param_groups"]]}


def load_states(module: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optimizer_state: dict) -> None:
    """Load full (unsharded) states, as ``full_state`` / ``optimizer_state`` write them."""
    if not is_fsdp(module):
        module.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    names, _ = _param_names(module)
    named = {"state": {names[i]: value for i, value in optimizer_state["state"].items()},
             "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in optimizer_state["param_groups"]]}
    set_model_state_dict(module, model_state, options=_full_options())
    set_optimizer_state_dict(module, optimizer, named, options=_full_options())


def grad_scaler(device: torch.device, amp: torch.dtype | None, sharded: bool) -> torch.amp.GradScaler:
    """fp16 loss scaling; under FSDP the scaler agrees on skipped steps across ranks (each holds a shard)."""
    if sharded:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type, enabled=amp is torch.float16)
    return torch.amp.GradScaler(device.type, enabled=amp is torch.float16)


