"""Dependency groups: units that own the same parameter slices, removed together."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .context import Context
from .spaces import FROZEN, flat_labels


@dataclass
class Group:
    """Units that own the same parameter slices; removing a unit removes all of its slices.

    ``slices`` lists, for every parameter the group touches, ``(name, dim, index)`` with
    ``index`` of shape ``(units, m)``: unit ``u`` owns entries ``index[u]`` of
    ``params[name]`` along ``dim``. Per-unit group norms of any dict of parameter tensors
    (e.g. generated, differentiable ones) are then::

        sq = sum(p[name].movedim(dim, 0)[index].pow(2).flatten(1).sum(1) for name, dim, index in slices)

    ``buffer_slices`` is the same for buffers (BatchNorm statistics ...).
    """

    key: str
    units: int
    slices: list[tuple[str, int, Tensor]]
    buffer_slices: list[tuple[str, int, Tensor]]
    roots: Tensor  # (units,) internal set ids, in unit order
    touches_flops: bool = False
    nodes: list[str] = field(default_factory=list)
    constants: list[str] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        """True when removing units of this group lowers FLOPs (and at least one unit can stay)."""
        return self.touches_flops and self.units >= 2

    def describe(self) -> str:
        names = sorted({name for name, _, _ in self.slices})
        head = ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")
        return f"group {self.key} ({self.units} units: {head})"


def build_groups(ctx: Context) -> list[Group]:
    root_of = ctx.uf.roots()
    params = {name for name, _ in ctx.gm.named_parameters(remove_duplicate=False)}
    entries = sorted(ctx.param_dims.items())
    entry_roots = [root_of[labels] for _, labels in entries]
    live = [(i, r[r != FROZEN]) for i, r in enumerate(entry_roots)]
    live = [(i, r) for i, r in live if len(r)]
    if not live:
        return []
    n_entries = len(entries)
    # (root, entry) pairs with multiplicities, as one int64 key per pair.
    keys = torch.cat([r * n_entries + i for i, r in live])
    pairs, counts = torch.unique(keys, return_counts=True)  # sorted by root, then entry
    signature: dict[int, list] = {}
    for key, c in zip(pairs.tolist(), counts.tolist()):
        signature.setdefault(key // n_entries, []).append((key % n_entries, c))
    by_sig: dict[tuple, list[int]] = {}
    for root, sig in signature.items():
        by_sig.setdefault(tuple(sig), []).append(root)
    group_of = torch.full((ctx.uf.size,), -1, dtype=torch.long)
    sigs = list(by_sig.items())
    for gi, (_sig, members) in enumerate(sigs):
        group_of[torch.tensor(members)] = gi
    flop_ids = [f for t in ctx.flop_terms for f in t.factors]
    flop_groups = set(torch.unique(group_of[root_of[torch.cat(flop_ids)]]).tolist()) if flop_ids else set()
    node_groups = {}
    for name, value in ctx.values.items():
        labels = flat_labels(value)
        if labels:
            node_groups[name] = set(torch.unique(group_of[root_of[torch.cat(labels)]]).tolist())
    unit_pos = torch.full((ctx.uf.size,), -1, dtype=torch.long)
    groups = []
    for gi, (sig, _members) in enumerate(sigs):
        # Units in order of first appearance in the group's first parameter dim: stable across runs.
        r0 = entry_roots[sig[0][0]]
        seen = r0[group_of[r0] == gi]
        uniq, inverse = torch.unique(seen, return_inverse=True)
        first = torch.full((len(uniq),), len(seen), dtype=torch.long).scatter_reduce_(
            0, inverse, torch.arange(len(seen)), reduce="amin")
        unit_roots = uniq[torch.argsort(first)]
        unit_pos[unit_roots] = torch.arange(len(unit_roots))
        slices, buffer_slices = [], []
        for entry, m in sig:
            (name, dim), _ = entries[entry]
            r = entry_roots[entry]
            sel = torch.nonzero(group_of[r] == gi).flatten()
            order = torch.argsort(unit_pos[r[sel]], stable=True)
            index = sel[order].view(len(unit_roots), m)
            (slices if name in params else buffer_slices).append((name, dim, index))
        sig_text = ";".join(f"{entries[e][0][0]}:{entries[e][0][1]}*{m}" for e, m in sig)
        digest = hashlib.sha1(sig_text.encode()).hexdigest()[:8]
        lead = slices[0] if slices else buffer_slices[0]
        key = f"{lead[0]}:{lead[1]}#{digest}"
        nodes = [n for n, gs in node_groups.items() if gi in gs]
        constants = [f"{n}: {ctx.constants[n]}" for n in nodes if n in ctx.constants]
        groups.append(Group(key, len(unit_roots), slices, buffer_slices, unit_roots, gi in flop_groups, nodes,
                            constants))
    groups.sort(key=lambda g: g.key)
    return groups
