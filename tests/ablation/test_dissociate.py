"""`localizer dissociate` on a tiny GPT-2 whose tokenizer knows the built-in texts: its JSON equals separate
`ablate` runs on the same selections, and its overlap equals `compare`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import CPU_FLAGS

from localizer.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """GPT-2 (2 blocks, d=32, 128 positions) with a BPE tokenizer trained on the built-in stimuli and task data."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from localizer.recording.builtin import builtin

    texts = []
    for name in ("language", "tom", "arithmetic", "language-next-token"):
        texts += list(builtin(name)["text"])
    for name in ("language-minimal-pairs", "tom-forced-choice", "arithmetic-forced-choice"):
        pairs = builtin(name)
        texts += list(pairs["good"]) + list(pairs["bad"])
    d = tmp_path_factory.mktemp("gpt2-builtin")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<pad>", "<eos>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    fast.save_pretrained(d)
    torch.manual_seed(3)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128, vocab_size=len(fast),
                        eos_token_id=fast.eos_token_id, bos_token_id=fast.eos_token_id)  # fmt: skip
    GPT2LMHeadModel(config).eval().save_pretrained(d)
    return str(d)


def test_dissociation_matrix_equals_separate_ablations(model_dir, tmp_path, monkeypatch, capsys):
    from localizer.ablation.ablate import run_ablation

    monkeypatch.chdir(tmp_path)
    args = ["dissociate", "--model", model_dir, "--localizers", "language,tom,arithmetic", "--out", "dis",
            "--select.top", "10%", "--select.controls", "3", "--log_dir", "logs", *CPU_FLAGS]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    doc = json.loads((tmp_path / "dis" / "dissociation.json").read_text())
    assert doc["networks"] == ["language", "tom", "arithmetic"]
    assert doc["tasks"] == ["language-next-token", "language-minimal-pairs", "tom-forced-choice",
                            "arithmetic-forced-choice"]  # fmt: skip
    assert set(doc) >= {"networks", "tasks", "baseline", "delta", "z", "dice"}
    # one cell, recomputed by a separate ablation of the same selection on the same task data
    for network, label, task in (("tom", "arithmetic-forced-choice", "minimal-pairs"),
                                 ("language", "language-next-token", "next-token")):  # fmt: skip
        alone = run_ablation(tmp_path / "dis" / network / "selection.h5", task, task_data=label, log_dir=None,
                             trainer={"accelerator": "cpu", "enable_progress_bar": False})  # fmt: skip
        assert doc["baseline"][label] == pytest.approx(alone["baseline"])
        assert doc["delta"][network][label] == pytest.approx(alone["delta"]["localized"])
        for kind, values in alone["z"].items():
            for metric, z in values.items():
                assert doc["z"][network][label][kind][metric] == (pytest.approx(z) if z is not None else None)
    # the overlap is what compare gives on the three selection files
    files = [str(tmp_path / "dis" / n / "selection.h5") for n in doc["networks"]]
    assert main(["compare", *files, "--out", str(tmp_path / "c.json")]) == 0
    capsys.readouterr()
    compared = json.loads((tmp_path / "c.json").read_text())
    np.testing.assert_allclose(np.array(doc["dice"], dtype=float), np.array(compared["dice"], dtype=float))
    # a random model is near chance on every forced choice: flagged, in the JSON and the printout
    assert "tom-forced-choice" in doc["near_chance"] and "arithmetic-forced-choice" in doc["near_chance"]
    assert "baseline near chance" in printed and "tom network" in printed
    assert (tmp_path / "dis" / "dissociation.png").stat().st_size > 0
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    assert main(args) == 2  # an earlier dissociation is not replaced without --overwrite
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_bad_localizers_are_one_line(gpt2_dir, capsys):
    assert main(["dissociate", "--model", gpt2_dir, "--localizers", "language,faces", *CPU_FLAGS]) == 2
    assert "no built-in task for ['faces']" in capsys.readouterr().err
    assert main(["dissociate", "--model", gpt2_dir, "--localizers", "language", *CPU_FLAGS]) == 2
    assert "give two or more" in capsys.readouterr().err
