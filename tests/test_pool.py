"""The metanetwork's buffer pool: reuse only of unreferenced memory, and identical results."""
from __future__ import annotations

import torch

from fxmeta.ir import lower, raise_params
from fxmeta.metanet import Metanet
from fxmeta.metanet.pool import TensorPool
from fxmeta.models import resnet20

torch.set_num_threads(1)


def test_reuses_only_unreferenced_buffers():
    pool = TensorPool(min_numel=0)
    assert pool.enabled
    a = pool.empty((4, 5), torch.float32)
    b = pool.empty((20,), torch.float32)
    assert a.data_ptr() != b.data_ptr()  # a is still referenced
    ptr = a.data_ptr()
    del a
    c = pool.empty((2, 10), torch.float32)
    assert c.data_ptr() == ptr and c.shape == (2, 10)
    view = c[1:]  # a view keeps the buffer in use
    del c
    assert pool.empty((20,), torch.float32).data_ptr() not in (ptr, b.data_ptr())
    del view
    assert pool.empty((20,), torch.float64).dtype == torch.float64  # dtype must match too


def test_trim_drops_buffers_a_step_did_not_use():
    pool = TensorPool(min_numel=0)
    pool.empty((10,), torch.float32)
    pool.empty((30,), torch.float32)
    pool.trim()
    assert len(pool.buffers) == 2  # both were handed out since the last trim
    pool.empty((10,), torch.float32)
    pool.trim()
    assert [b.numel() for b in pool.buffers] == [10]
    assert TensorPool(min_numel=100).empty((10,), torch.float32).numel() == 10  # small: not pooled
    pool.clear()
    assert pool.nbytes == 0


def _step(net, graph):
    params = raise_params(net(graph))
    loss = sum((v.double() ** 2).sum() for v in params.values() if v.requires_grad)
    grads = torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)
    return loss.detach(), [g for g in grads if g is not None]


def test_metanet_steps_with_the_pool_match_fresh_memory():
    model = resnet20().eval()
    graph = lower(model, torch.randn(1, 3, 8, 8))
    net = Metanet.for_graph(graph, width=8, depth=3, ratio=0.05)
    net.pool.min_numel = 0
    reference = Metanet.for_graph(graph, width=8, depth=3, ratio=0.05)
    reference.load_state_dict(net.state_dict())
    reference.pool.enabled = False
    want = _step(reference, graph)
    for _ in range(3):  # later steps run on the first step's buffers
        got = _step(net, graph)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert net.pool.buffers
    # two graphs alive at once: the second forward must not reuse the first one's saved states
    first = raise_params(net(graph))
    second = raise_params(net(graph))
    for params in (first, second):
        loss = sum((v.double() ** 2).sum() for v in params.values() if v.requires_grad)
        grads = torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)
        torch.testing.assert_close((loss.detach(), [g for g in grads if g is not None]), want, rtol=0, atol=0)
