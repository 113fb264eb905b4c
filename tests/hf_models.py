"""Tiny Hugging Face transformers models built from config objects (random weights, nothing downloads)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

NAMES = ("llama", "qwen2", "gpt2", "bert", "vit")


def make(name: str) -> tuple[nn.Module, Tensor]:
    """The model ``name`` in eval mode, without a KV cache, and an example input for it."""
    import transformers as tf

    torch.manual_seed(0)
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    if name == "llama":  # GQA: two query heads per key/value head; lm_head tied to the embedding
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**small, num_key_value_heads=2, vocab_size=128,
                                                   tie_word_embeddings=True))
    elif name == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**small, num_key_value_heads=2, vocab_size=128))
    elif name == "gpt2":  # Conv1D layers (addmm), tied lm_head
        model = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=32,
                                                 bos_token_id=0, eos_token_id=0))
    elif name == "bert":
        model = tf.BertForSequenceClassification(tf.BertConfig(**small, vocab_size=128, max_position_embeddings=32))
    elif name == "vit":
        model = tf.ViTForImageClassification(tf.ViTConfig(**small, image_size=32, patch_size=8, num_labels=10))
    else:
        raise KeyError(name)
    model.config.use_cache = False
    x = torch.randn(1, 3, 32, 32) if name == "vit" else torch.randint(0, 128, (1, 16))
    return model.eval(), x


# (parameter, dim) whose size is the MLP intermediate width, the head count x head size and the hidden width
WIDTHS = {
    "llama": {"mlp": ("model.layers.0.mlp.up_proj.weight", 0), "heads": ("model.layers.0.self_attn.q_proj.weight", 0),
              "hidden": ("model.embed_tokens.weight", 1)},
    "qwen2": {"mlp": ("model.layers.0.mlp.up_proj.weight", 0), "heads": ("model.layers.0.self_attn.q_proj.weight", 0),
              "hidden": ("model.embed_tokens.weight", 1)},
    "gpt2": {"mlp": ("transformer.h.0.mlp.c_fc.weight", 1), "heads": ("transformer.h.0.attn.c_proj.weight", 0),
             "hidden": ("transformer.wte.weight", 1)},
    "bert": {"mlp": ("bert.encoder.layer.0.intermediate.dense.weight", 0),
             "heads": ("bert.encoder.layer.0.attention.self.query.weight", 0),
             "hidden": ("bert.embeddings.word_embeddings.weight", 1)},
    "vit": {"mlp": ("vit.layers.0.mlp.fc1.weight", 0), "heads": ("vit.layers.0.attention.q_proj.weight", 0),
            "hidden": ("vit.embeddings.patch_embeddings.projection.weight", 0)},
}
TIED = {"llama": ("model.embed_tokens.weight", "lm_head.weight"), "gpt2": ("transformer.wte.weight", "lm_head.weight")}
