"""The models of ``coverage_transformers``: transformers families from small configs and timm
architectures at reduced image sizes, all with random weights (nothing downloads). A data module
shared by the benchmarks, not a benchmark.

Each entry builds ``(model, example_input)`` and names the parameters whose sizes say which
dims a prune removed: ``hidden`` (the model width: one parameter holding it, for ConvNeXt every
block's depthwise conv, so every stage's width), ``attn`` (the query
or qkv projection of every layer: heads x head size) and ``mlp`` (the first MLP projection of
every layer), each as ``(regex over parameter names, dim)``, summed over the matches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

# token models: batch 8 of 64 ids from a vocabulary of 2000
BATCH, TOKENS, VOCAB = 8, 64, 2000
# the decoder-only and encoder configs share one size: 4 layers of width 256, 8 heads, MLP 1024
WIDTH = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8)


@dataclass(frozen=True)
class Entry:
    family: str  # "llm" (q/k/v/o and a gated MLP), "hf" (other transformers), "timm"
    build: Callable[[], tuple[nn.Module, torch.Tensor]]
    hidden: tuple[str, int]
    attn: tuple[str, int] | None
    mlp: tuple[str, int]
    note: str


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, TOKENS), generator=torch.Generator().manual_seed(0))


def _images(size: int, batch: int = BATCH) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _hf(cls_name: str, config_name: str, x: Callable[[], torch.Tensor], **config) -> Callable:
    def build():
        import transformers as tf

        torch.manual_seed(0)
        cfg = getattr(tf, config_name)(**config)
        cfg.use_cache = False
        return getattr(tf, cls_name)(cfg).eval(), x()
    return build


def _timm(name: str, size: int, **kwargs) -> Callable:
    def build():
        import timm

        torch.manual_seed(0)
        # batch 1 for the prune: fx graphs take any batch, latency is timed at batch 8
        return timm.create_model(name, pretrained=False, **kwargs).eval(), _images(size, batch=1)
    return build


_LLM = dict(attn=(r"self_attn\.q_proj\.weight$", 0), mlp=(r"mlp\.up_proj\.weight$", 0),
            hidden=("model.embed_tokens.weight", 1))
_QKV = dict(attn=(r"attn\.qkv\.weight$", 0), mlp=(r"mlp\.fc1\.weight$", 0))

MODELS: dict[str, Entry] = {
    "hf Llama (GQA 8/2)": Entry("llm", _hf("LlamaForCausalLM", "LlamaConfig", _ids, **WIDTH, num_key_value_heads=2,
                                           vocab_size=VOCAB), **_LLM, note="4 x 256, 8 query / 2 kv heads"),
    "hf Qwen2 (GQA 8/2)": Entry("llm", _hf("Qwen2ForCausalLM", "Qwen2Config", _ids, **WIDTH, num_key_value_heads=2,
                                           vocab_size=VOCAB), **_LLM, note="4 x 256, 8 query / 2 kv heads"),
    "hf Mistral (GQA 8/2)": Entry("llm", _hf("MistralForCausalLM", "MistralConfig", _ids, **WIDTH,
                                             num_key_value_heads=2, vocab_size=VOCAB), **_LLM,
                                  note="4 x 256, 8 query / 2 kv heads"),
    "hf GPT-2": Entry("hf", _hf("GPT2LMHeadModel", "GPT2Config", _ids, n_embd=256, n_layer=4, n_head=8,
                                vocab_size=VOCAB, n_positions=TOKENS, bos_token_id=0, eos_token_id=0),
                      hidden=("transformer.wte.weight", 1), attn=(r"attn\.c_proj\.weight$", 0),
                      mlp=(r"mlp\.c_fc\.weight$", 1), note="4 x 256, 8 heads, Conv1D layers"),
    "hf BERT": Entry("hf", _hf("BertForSequenceClassification", "BertConfig", _ids, **WIDTH, vocab_size=VOCAB,
                               max_position_embeddings=TOKENS),
                     hidden=("bert.embeddings.word_embeddings.weight", 1),
                     attn=(r"attention\.self\.query\.weight$", 0), mlp=(r"intermediate\.dense\.weight$", 0),
                     note="4 x 256, 8 heads"),
    "hf ViT": Entry("hf", _hf("ViTForImageClassification", "ViTConfig", lambda: _images(64), **WIDTH, image_size=64,
                              patch_size=8, num_labels=10),
                    hidden=("vit.embeddings.patch_embeddings.projection.weight", 0),
                    attn=(r"attention\.q_proj\.weight$", 0), mlp=(r"mlp\.fc1\.weight$", 0),
                    note="4 x 256, 8 heads, 64x64 images, patch 8"),
    "hf T5 encoder": Entry("hf", _hf("T5EncoderModel", "T5Config", _ids, d_model=256, d_kv=32, d_ff=1024,
                                     num_layers=4, num_heads=8, vocab_size=VOCAB),
                           hidden=("encoder.embed_tokens.weight", 1), attn=(r"SelfAttention\.q\.weight$", 0),
                           mlp=(r"DenseReluDense\.wi\.weight$", 0), note="4 x 256, 8 heads, relative position bias"),
    "hf Whisper encoder": Entry("hf", _hf("WhisperForAudioClassification", "WhisperConfig",
                                          lambda: torch.randn(BATCH, 80, 200, generator=torch.Generator().manual_seed(0)),
                                          d_model=256, encoder_layers=4, encoder_attention_heads=8,
                                          encoder_ffn_dim=1024, num_mel_bins=80, max_source_positions=100,
                                          num_labels=10),
                                hidden=("encoder.conv2.weight", 0), attn=(r"self_attn\.q_proj\.weight$", 0),
                                mlp=(r"fc1\.weight$", 0), note="4 x 256, 8 heads, 80 mel bins x 200 frames"),
    "timm vit_tiny_patch16_224": Entry("timm", _timm("vit_tiny_patch16_224", 96, img_size=96, num_classes=10),
                                       hidden=("patch_embed.proj.weight", 0), **_QKV, note="12 x 192, 3 heads, 96x96"),
    "timm deit_small_patch16_224": Entry("timm", _timm("deit_small_patch16_224", 96, img_size=96, num_classes=10),
                                         hidden=("patch_embed.proj.weight", 0), **_QKV,
                                         note="12 x 384, 6 heads, 96x96"),
    "timm swin_tiny_patch4_window7_224": Entry("timm", _timm("swin_tiny_patch4_window7_224", 128, img_size=128,
                                                             window_size=4, num_classes=10),
                                               hidden=("patch_embed.proj.weight", 0), **_QKV,
                                               note="depths 2-2-6-2, 128x128, window 4"),
    "timm convnext_atto": Entry("timm", _timm("convnext_atto", 160, num_classes=10),
                                hidden=(r"conv_dw\.weight$", 0), attn=None, mlp=(r"mlp\.fc1\.weight$", 0),
                                note="widths 40-80-160-320, 160x160"),
    "timm efficientformer_l1": Entry("timm", _timm("efficientformer_l1", 224, num_classes=10),
                                     hidden=("stem.conv1.weight", 0), attn=(r"token_mixer\.qkv\.weight$", 0),
                                     mlp=(r"mlp\.fc1\.weight$", 0), note="224x224 (fixed by its attention)"),
}
