"""Rules on what tracing real models leaves in the graph: a pad amount computed from a shape,
an optional input left at None (timm's Swin and ViT blocks)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from test_rules import check, prunable
from torch import nn

torch.set_num_threads(1)


def test_padding_by_an_amount_computed_from_the_shape_keeps_the_channels_free():
    class PadToEven(nn.Module):  # timm's Swin pads (B, H, W, C) by amounts computed from H and W
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

        def forward(self, x):
            h, w = x.shape[1], x.shape[2]
            y = F.pad(self.a(x), (0, 0, 0, w % 2, 0, h % 2))
            return self.b(torch.relu(y)).mean((1, 2))

    analysis, pruned = check(PadToEven(), torch.randn(2, 5, 5, 4))
    assert pruned.a.out_features == 4


def test_an_attention_mask_input_left_at_none_leaves_the_heads_free():
    class Attention(nn.Module):  # timm's blocks: attn_mask=None is an input of their own, traced as one
        def __init__(self):
            super().__init__()
            self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)

        def forward(self, x, attn_mask=None):
            b, n, _ = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, 4, 4).permute(2, 0, 3, 1, 4).unbind(0)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            return self.proj(y.transpose(1, 2).reshape(b, n, 16))

    analysis, _ = check(Attention(), torch.randn(2, 6, 16))
    assert any(g.units == 4 and any(n == "qkv.weight" for n, _, _ in g.slices) for g in prunable(analysis))
