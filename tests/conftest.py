"""Tiny random-init models built from configs, synthetic stimuli, all under tmp_path (no network)."""

from __future__ import annotations

import lightning  # noqa: F401  imported here so its log handler binds pytest's session stderr, not a
import numpy as np  # test's capsys stream that is closed after that test
import pytest
import torch
from helpers import make_texts, make_tokenizer, write_jsonl


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    """A 2-block random-init GPT-2 (d=32) with its tokenizer, saved with save_pretrained."""
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path_factory.mktemp("gpt2")
    tok = make_tokenizer(d)
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        n_positions=64,
        vocab_size=len(tok),
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    GPT2LMHeadModel(cfg).eval().save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory):
    """A 2-layer random-init BERT encoder with the same tokenizer (bidirectional, absolute positions)."""
    from transformers import BertConfig, BertModel

    d = tmp_path_factory.mktemp("bert")
    tok = make_tokenizer(d)
    torch.manual_seed(1)
    cfg = BertConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=len(tok),
        max_position_embeddings=64,
        pad_token_id=tok.convert_tokens_to_ids("<pad>"),
    )
    BertModel(cfg).eval().save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def resnet_dir(tmp_path_factory):
    """A random-init HF ResNet (2 stages of 1 basic block) with a 32-px image processor."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    d = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(2)
    cfg = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], layer_type="basic", num_labels=3
    )
    ResNetForImageClassification(cfg).eval().save_pretrained(d)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    """37 text stimuli (odd count, 1..15 words) as JSONL."""
    return write_jsonl(tmp_path_factory.mktemp("stim") / "texts.jsonl", make_texts(37))


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """An image folder: 19 positive + 18 control random RGB/gray PNGs of mixed sizes."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for sub, n in (("positive", 19), ("control", 18)):
        (root / sub).mkdir()
        for i in range(n):
            h, w = rng.integers(20, 48, size=2)
            if i % 3 == 0:
                im = Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8), mode="L")
            else:
                im = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), mode="RGB")
            im.save(root / sub / f"{i:03d}.png")
    return str(root)
