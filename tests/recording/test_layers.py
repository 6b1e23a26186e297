"""Layer selection by name, glob and auto; pooling against hand computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from localizer.errors import LocalizerError
from localizer.recording.layers import auto_layers, pool, resolve_layers


def gpt2():
    from transformers import GPT2Config, GPT2Model

    return GPT2Model(GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=50, n_positions=16))


def test_auto_and_globs_on_gpt2():
    m = gpt2()
    assert auto_layers(m) == ["h.0", "h.1", "h.2"]
    assert resolve_layers(m, "h.*") == ["h.0", "h.1", "h.2"]  # '*' stays inside one dotted component
    assert resolve_layers(m, "h.1.mlp, h.0") == ["h.1.mlp", "h.0"]  # the order given
    assert resolve_layers(m, ["h.*.attn", "h.0.attn"]) == ["h.0.attn", "h.1.attn", "h.2.attn"]
    assert "h.0.mlp.c_fc" in resolve_layers(m, "h.0.**")


def test_auto_on_bert_and_sequential():
    from transformers import BertConfig, BertModel

    bert = BertModel(
        BertConfig(num_hidden_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=50)
    )
    assert auto_layers(bert) == ["encoder.layer.0", "encoder.layer.1"]
    stack = nn.Module()
    stack.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(4)])
    stack.head = nn.Linear(8, 2)
    assert auto_layers(stack) == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    with pytest.raises(LocalizerError, match="found no stack"):
        auto_layers(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Conv1d(8, 8, 1)))


def test_unknown_pattern_lists_candidates():
    with pytest.raises(LocalizerError, match=r"'h\.9' matches no module; candidates: .*h\.\*"):
        resolve_layers(gpt2(), "h.9")


def test_pooling_by_hand():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    last = pool(x, "last", mask)
    for b, t in enumerate((2, 4, 4)):
        torch.testing.assert_close(last[b], x[b, t])
    mean = pool(x, "mean", mask)
    torch.testing.assert_close(mean[0], x[0, :3].mean(0))
    torch.testing.assert_close(mean[1], x[1, 2:].mean(0))
    img = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(pool(img, "channel"), img.mean((2, 3)))
    assert torch.equal(pool(img, "flat")[1], img[1].flatten())
    with pytest.raises(LocalizerError, match="needs a \\[batch, channels"):
        pool(x, "channel", layer="h.0")
