"""The graph metanetwork: exact identity at ratio 0, equivariance, agreement with a plain
edge-list implementation (values and gradients), scatter backends, kinds, save/load."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fxmeta.errors import FxmetaError
from fxmeta.ir import lower, raise_params
from fxmeta.metanet import Metanet, has_torch_scatter, learned_columns, load_metanet, save_metanet, scatter_stats
from fxmeta.metanet.kernels import Block, BlockPass, Workspace, _Chunk
from fxmeta.models import resnet20

from helpers import randomize_bn

torch.set_num_threads(1)


class Tiny(nn.Module):
    """Dense, grouped and depthwise convs, a residual add, and a linear fed by a flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.conv3 = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6 * 2 * 2, 5)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        z = torch.relu(self.bn2(self.conv2(y))) + y
        z = self.conv3(self.dw(z))
        return self.fc(F.adaptive_avg_pool2d(z, 2).flatten(1))


def _tiny_graph(dtype=torch.float32):
    model = randomize_bn(Tiny()).eval().to(dtype)
    return model, lower(model, torch.randn(1, 3, 8, 8, dtype=dtype))


def _resnet20_graph():
    model = randomize_bn(resnet20()).eval()
    return model, lower(model, torch.randn(1, 3, 8, 8))


# -- a plain implementation over a flat edge list, for comparison ------------------------------
def _rms(values: list[torch.Tensor], dim=None) -> torch.Tensor:
    x = torch.cat(values)
    s = (x * x).mean() if dim is None else (x * x).mean(dim)
    s = torch.sqrt(s)
    return torch.where(s > 0, s, torch.ones_like(s))


def _pna_flat(msg, ids, n):
    d = msg.shape[1]
    count = torch.zeros(n, dtype=msg.dtype).index_add(0, ids, torch.ones(len(ids), dtype=msg.dtype))
    s = torch.zeros(n, d, dtype=msg.dtype).index_add(0, ids, msg)
    q = torch.zeros(n, d, dtype=msg.dtype).index_add(0, ids, msg * msg)
    index = ids[:, None].expand(-1, d)
    mx = torch.zeros(n, d, dtype=msg.dtype).scatter_reduce(0, index, msg, "amax", include_self=False)
    mn = torch.zeros(n, d, dtype=msg.dtype).scatter_reduce(0, index, msg, "amin", include_self=False)
    c = count.clamp(min=1)[:, None]
    mean = s / c
    std = torch.sqrt(F.relu(q / c - mean * mean) + 1e-5)
    return torch.cat([mean, std, mx, mn], 1)


def reference_forward(net: Metanet, graph) -> tuple[list, list]:
    """The equations of fxmeta.metanet.model's docstring, written directly on a (src, dst) edge list."""
    d, dtype, layers = net.config.width, net.flip.dtype, graph.layers
    node_scale = {}
    for kind in {la.node_kind for la in layers if la.node is not None}:
        node_scale[kind] = _rms([la.node.to(dtype) for la in layers if la.node_kind == kind], 0)
    edge_scale = {}
    for kind in {la.edge_kind for la in layers if la.edge is not None}:
        edge_scale[kind] = _rms([la.edge.reshape(-1).to(dtype) for la in layers if la.edge_kind == kind])
    h = []
    for la in layers:
        codec = net.node_codecs[la.node_kind.replace(".", "_")]
        h.append(codec.enc(la.node.to(dtype) / node_scale[la.node_kind]) if la.node is not None
                 else codec.emb.expand(la.count, -1))
    h = torch.cat(h)
    src, dst, e, owner = [], [], [], []
    for i, la in enumerate(layers):
        if la.edge is None:
            continue
        index = la.edge_index()
        src.append(index[0])
        dst.append(index[1])
        enc = net.edge_codecs[la.edge_kind].enc
        e.append(enc(la.edge.reshape(-1, la.edge.shape[2]).to(dtype) / edge_scale[la.edge_kind]))
        owner += [i] * index.shape[1]
    src, dst, e = torch.cat(src), torch.cat(dst), torch.cat(e)
    owner = torch.tensor(owner)
    n = graph.num_nodes
    for mp in net.layers:
        a, b, c, dd = F.silu(mp.abcd(mp.norm(h))).split(d, 1)
        fwd = _pna_flat(a[dst] * b[src] * e, dst, n)
        bwd = _pna_flat(a[src] * b[dst] * (net.flip * e), src, n)
        h = h + mp.down(fwd) + mp.down(bwd)
        h = h + mp.mlp(h)
        e = e + c[src] * dd[dst] * e + c[dst] * dd[src] * e
    edges, nodes = [], []
    learned = learned_columns(graph)
    for i, la in enumerate(layers):
        if la.edge is not None and la.learned_edges:
            dec = net.edge_codecs[la.edge_kind].dec
            delta = dec(e[owner == i]).reshape(la.edge.shape)
            edges.append(la.edge + net.config.ratio * edge_scale[la.edge_kind] * delta)
        else:
            edges.append(la.edge)
        if la.node is not None:
            dec = net.node_codecs[la.node_kind.replace(".", "_")].dec
            delta = dec(h[la.start:la.stop]) * net.config.ratio * node_scale[la.node_kind]
            nodes.append(torch.where(learned[i], la.node + delta, la.node))
        else:
            nodes.append(None)
    return edges, nodes


# -- tests ------------------------------------------------------------------------------------------
def test_identity_at_ratio_zero_is_exact():
    model, graph = _resnet20_graph()
    net = Metanet.for_graph(graph, width=8, depth=2, ratio=0.0)
    params = raise_params(net(graph))
    state = model.state_dict()
    assert params.keys() >= state.keys()
    for name, value in state.items():
        assert torch.equal(params[name], value), name


def test_nonzero_ratio_changes_learned_tables_only():
    model, graph = _resnet20_graph()
    net = Metanet.for_graph(graph, width=8, depth=2, ratio=0.01)
    out = net(graph)
    params = raise_params(out)
    state = model.state_dict()
    assert not torch.equal(params["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert not torch.equal(params["layer1.0.bn1.weight"], state["layer1.0.bn1.weight"])
    for name in ("layer1.0.bn1.running_mean", "layer1.0.bn1.running_var", "bn1.num_batches_tracked"):
        assert torch.equal(params[name], state[name]), name  # buffers pass through
    for layer, new in zip(graph.layers, out.layers):
        if layer.edge is not None and not layer.learned_edges:
            assert new.edge is layer.edge  # structural edges pass through
    rel = (params["layer1.0.conv1.weight"] - state["layer1.0.conv1.weight"]).norm() / state["layer1.0.conv1.weight"].norm()
    assert 0 < rel < 0.1  # a small step, as the residual ratio intends


@pytest.mark.parametrize("chunk", [1, 40, 1 << 20])
def test_matches_plain_edge_list_implementation(chunk):
    _, graph = _tiny_graph(torch.double)
    assert {"conv2d:3x3", "conv2d:1x1", "junction:add", "linear:flatten4"} <= set(graph.edge_kinds)
    assert any(la.groups not in (1, la.count) for la in graph.layers)  # a grouped conv is covered
    net = Metanet.for_graph(graph, width=6, depth=3, ratio=0.5, chunk=chunk).double()
    out = net(graph)
    ref_edges, ref_nodes = reference_forward(net, graph)
    weights = []
    loss_a = loss_b = 0
    for new, re_, nn_, rn in zip(out.layers, ref_edges, [la.node for la in out.layers], ref_nodes):
        if new.edge is not None:
            torch.testing.assert_close(new.edge.double(), re_.double(), rtol=1e-9, atol=1e-10)
            w = torch.randn(new.edge.shape, dtype=torch.double)
            weights.append(w)
            loss_a = loss_a + (new.edge.double() * w).sum()
            loss_b = loss_b + (re_.double() * w).sum()
        if nn_ is not None:
            torch.testing.assert_close(nn_.double(), rn.double(), rtol=1e-9, atol=1e-10)
            w = torch.randn(nn_.shape, dtype=torch.double)
            loss_a = loss_a + (nn_.double() * w).sum()
            loss_b = loss_b + (rn.double() * w).sum()
    grads_a = torch.autograd.grad(loss_a, list(net.parameters()), allow_unused=True)
    grads_b = torch.autograd.grad(loss_b, list(net.parameters()), allow_unused=True)
    used = 0
    for (name, _), ga, gb in zip(net.named_parameters(), grads_a, grads_b):
        if gb is None:
            assert ga is None or not ga.any(), name
            continue
        used += 1
        torch.testing.assert_close(ga, gb, rtol=1e-7, atol=1e-9, msg=name)
    assert used > 20


# chunking by rows (row_step 2) in every combination is the slow half; one combination stays in the fast suite
@pytest.mark.parametrize("update, raw, row_step", [
    pytest.param(u, r, s, marks=pytest.mark.slow) if s == 2 and not (u and r) else (u, r, s)
    for u in (False, True) for r in (False, True) for s in (None, 2)])
def test_block_pass_gradcheck(row_step, raw, update):
    d, G, R, J, k = 3, 2, 5, 4, 2
    if row_step is None:
        chunks = [_Chunk(g, g + 1, 0, R) for g in range(G)]
    else:
        chunks = [_Chunk(g, g + 1, r0, min(R, r0 + row_step)) for g in range(G) for r0 in range(0, R, row_step)]
    block = Block(0, G, R, J, k, chunks, True, row_step)
    ws = Workspace(R * J * d * 4, torch.double)
    x = torch.randn(G, R, J, k, dtype=torch.double) if raw else torch.randn(G, R, d, J, dtype=torch.double,
                                                                              requires_grad=True)
    vs = torch.randn(G, 1, 3 * d, J, dtype=torch.double, requires_grad=True)
    vd = torch.randn(G, R, 3 * d, 1, dtype=torch.double, requires_grad=True)
    w = torch.randn(d, k, dtype=torch.double, requires_grad=True) if raw else None
    b = torch.randn(d, dtype=torch.double, requires_grad=True) if raw else None

    none4 = (None,) * 4

    def block_pass(*args):
        return tuple(o for o in BlockPass.apply(*args, *none4, block, update, ws) if o is not None)

    assert torch.autograd.gradcheck(block_pass, (x, vs, vd, w, b))
    if update:
        return
    # the last layer's pass with the edge decoder: every output and every input at once
    dec = [torch.randn(d, d, dtype=torch.double, requires_grad=True), torch.randn(d, dtype=torch.double, requires_grad=True),
           torch.randn(k, d, dtype=torch.double, requires_grad=True), torch.randn(k, dtype=torch.double, requires_grad=True)]

    def decode_pass(*args):
        return tuple(o for o in BlockPass.apply(*args, block, False, ws) if o is not None)

    assert torch.autograd.gradcheck(decode_pass, (x, vs, vd, w, b, *dec))


def test_metanet_needs_a_layer():
    graph = _tiny_graph()[1]
    with pytest.raises(FxmetaError, match="depth >= 1"):
        Metanet.for_graph(graph, depth=0)


def _permute_block_conv(model: nn.Module, block: nn.Module, perm: torch.Tensor) -> None:
    """Permute block.conv1's output channels, its BatchNorm and block.conv2's inputs: same function."""
    with torch.no_grad():
        block.conv1.weight.copy_(block.conv1.weight[perm])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(block.bn1, name).copy_(getattr(block.bn1, name)[perm])
        block.conv2.weight.copy_(block.conv2.weight[:, perm])


def test_equivariance_to_hidden_channel_permutations():
    model = randomize_bn(resnet20()).eval()
    other = randomize_bn(resnet20()).eval()
    other.load_state_dict(model.state_dict())
    perms = {"layer1.1": torch.randperm(16), "layer3.0": torch.randperm(64)}
    for name, perm in perms.items():
        _permute_block_conv(other, other.get_submodule(name), perm)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), rtol=1e-5, atol=1e-5)  # same function
    g1, g2 = lower(model, x), lower(other, x)
    net = Metanet.for_graph(g1, width=8, depth=3, ratio=0.05)
    with torch.no_grad():
        p1, p2 = raise_params(net(g1)), raise_params(net(g2))
    assert not torch.equal(p1["layer1.1.conv1.weight"], model.state_dict()["layer1.1.conv1.weight"])
    expected = dict(p1)
    for name, perm in perms.items():
        expected[f"{name}.conv1.weight"] = p1[f"{name}.conv1.weight"][perm]
        for col in ("weight", "bias", "running_mean", "running_var"):
            expected[f"{name}.bn1.{col}"] = p1[f"{name}.bn1.{col}"][perm]
        expected[f"{name}.conv2.weight"] = p1[f"{name}.conv2.weight"][:, perm]
    for name in model.state_dict():
        torch.testing.assert_close(p2[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_gradient_reaches_metanet_through_functional_call():
    model, graph = _resnet20_graph()
    net = Metanet.for_graph(graph, width=8, depth=2, ratio=0.01)
    params = raise_params(net(graph))
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    loss = F.cross_entropy(torch.func.functional_call(graph.module, params, (x,)), y)
    loss.backward()
    for name, p in net.named_parameters():
        if "junction" in name or name == "node_codecs.linear+bias.enc.weight":
            continue  # structural edges are never decoded; the zero-init fc bias encodes as zeros
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())  # the data model is data


def test_unknown_kinds_are_refused():
    _, graph = _resnet20_graph()
    net = Metanet.for_graph(graph, width=8, depth=1)
    _, tiny = _tiny_graph()
    with pytest.raises(FxmetaError, match="unknown to this metanet"):
        net(tiny)


def test_save_and_load_round_trip(tmp_path):
    _, graph = _resnet20_graph()
    net = Metanet.for_graph(graph, width=8, depth=2, ratio=0.01)
    path = tmp_path / "metanet.pt"
    save_metanet(net, str(path))
    obj = torch.load(path, weights_only=True)
    assert obj["config"]["node_kinds"] == net.config.node_kinds
    loaded = load_metanet(str(path))
    with torch.no_grad():
        a, b = raise_params(net(graph)), raise_params(loaded(graph))
    assert all(torch.equal(a[k], b[k]) for k in a)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(FxmetaError, match="not a metanet file"):
        load_metanet(str(tmp_path / "junk.pt"))


@pytest.mark.skipif(not has_torch_scatter(), reason="torch_scatter is not installed (optional extra)")
def test_torch_scatter_backend_agrees_with_native():
    vals = torch.randn(50, 4, 5, requires_grad=True)
    ids = torch.randint(0, 12, (50,))
    a = scatter_stats(vals, ids, 15, "torch")
    b = scatter_stats(vals, ids, 15, "torch_scatter")
    torch.testing.assert_close(a, b)
    w = torch.randn_like(a)
    ga, = torch.autograd.grad((a * w).sum(), vals)
    gb, = torch.autograd.grad((b * w).sum(), vals)
    torch.testing.assert_close(ga, gb)
    _, graph = _tiny_graph()
    net = Metanet.for_graph(graph, width=6, depth=2, ratio=0.1, scatter="torch")
    other = Metanet(net.config, scatter="torch_scatter")
    other.load_state_dict(net.state_dict())
    with torch.no_grad():
        for la, lb in zip(net(graph).layers, other(graph).layers):
            if la.edge is not None:
                torch.testing.assert_close(la.edge, lb.edge)
