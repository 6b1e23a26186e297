"""Nothing lost, nothing silently wrong (issue 12): outputs never land on inputs, foreign folders are never emptied,
a resume never mixes models, an ablation refuses another model, odd names and sizes are handled."""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest
from helpers import CPU, CPU_FLAGS, file_contents, make_texts, run_cli, synthetic, write_activation_file, write_jsonl

import localizer
from localizer.cli import main


def one_error(capsys, argv, command: str) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"localizer {command}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def acts(tmp_path):
    layers, positive = synthetic(n_pos=20, n_ctl=20, units=(30, 30))
    return write_activation_file(tmp_path / "a.h5", layers, positive)


def test_an_output_is_never_an_input(gpt2_dir, text_file, tmp_path, capsys, acts):
    stimuli = str(shutil.copy(text_file, tmp_path / "s.jsonl"))
    before = open(stimuli).read()
    base = ["extract", "--model", gpt2_dir, "--stimuli", stimuli, *CPU_FLAGS]
    msg = one_error(capsys, [*base, "--out", str(tmp_path / "x.h5"), "--selection", str(tmp_path / "x.h5")], "extract")
    assert "--out and --selection are the same file" in msg and not (tmp_path / "x.h5").exists()
    msg = one_error(capsys, [*base, "--out", stimuli, "--overwrite"], "extract")
    assert "is an input (--stimuli)" in msg
    os.link(stimuli, tmp_path / "hard.h5")  # the same file under another name
    msg = one_error(capsys, [*base, "--out", str(tmp_path / "hard.h5"), "--overwrite"], "extract")
    assert "is an input (--stimuli)" in msg and "the same file as" in msg
    os.symlink(os.path.join(gpt2_dir, "model.safetensors"), tmp_path / "weights.h5")
    msg = one_error(capsys, [*base, "--out", str(tmp_path / "weights.h5"), "--overwrite"], "extract")
    assert "is an input (--model)" in msg
    assert open(stimuli).read() == before
    a = str(acts)
    before = file_contents(a)
    assert "is an input (--activations)" in one_error(capsys, ["select", "--activations", a, "--out", a, "--overwrite"],
                                                      "select")  # fmt: skip
    with pytest.raises(localizer.LocalizerError, match=r"out .* is an input \(activations\)"):
        from localizer.selection.select import select_file

        select_file(a, a)  # the Python API refuses too, without any overwrite flag
    np.testing.assert_array_equal(file_contents(a)["activations/block.0"], before["activations/block.0"])
    sel = str(tmp_path / "sel.h5")
    localizer.select(a, sel, count=3, controls=2, log_dir=None)
    msg = one_error(
        capsys, ["ablate", "--selection", sel, "--task", "agreement", "--out", sel, "--overwrite"], "ablate"
    )
    assert "is an input (--selection)" in msg and h5py.is_hdf5(sel)


def test_a_folder_localizer_did_not_create_is_never_emptied(gpt2_dir, text_file, tmp_path, capsys):
    mine = tmp_path / "my_results"
    mine.mkdir()
    (mine / "thesis.tex").write_text("three years of work")
    os.symlink(mine, tmp_path / "a.h5.shards")
    base = ["extract", "--model", gpt2_dir, "--stimuli", text_file, *CPU_FLAGS, "--layers", "transformer.h.0"]
    for extra in ([], ["--overwrite"]):
        msg = one_error(capsys, [*base, "--out", str(tmp_path / "a.h5"), *extra], "extract")
        assert "not a folder localizer created" in msg
    (tmp_path / "b.h5.shards").mkdir()
    (tmp_path / "b.h5.shards" / "notes.txt").write_text("mine")
    msg = one_error(capsys, [*base, "--out", str(tmp_path / "b.h5"), "--overwrite"], "extract")
    assert "holds files localizer did not write (notes.txt)" in msg
    assert (mine / "thesis.tex").read_text() == "three years of work" and sorted(os.listdir(mine)) == ["thesis.tex"]
    assert (tmp_path / "b.h5.shards" / "notes.txt").exists()


def test_the_weights_fingerprint_covers_every_byte_and_is_cached(tmp_path, monkeypatch):
    import torch

    from localizer.recording.fingerprint import files_fingerprint, weights_fingerprint

    torch.manual_seed(0)
    a, b = torch.nn.Linear(100, 100), torch.nn.Linear(100, 100)
    b.load_state_dict(a.state_dict())
    assert weights_fingerprint(a) == weights_fingerprint(b)
    with torch.no_grad():
        b.weight[99, 99] += 1e-6  # value 10000 of the tensor: beyond the 4096 that the old fingerprint read
    assert weights_fingerprint(a) != weights_fingerprint(b)

    monkeypatch.setenv("LOCALIZER_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "w.bin"
    f.write_bytes(os.urandom(1 << 16))
    first = files_fingerprint([f])
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *args, **kw: reads.append(args[0]) or real_open(*args, **kw))
    assert files_fingerprint([f]) == first and str(f.resolve()) not in map(str, reads)  # from the cache: no read
    monkeypatch.setattr("builtins.open", real_open)
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    os.utime(f, ns=(1, 1))  # a changed size or mtime is read again
    assert files_fingerprint([f]) != first


def test_a_resume_never_mixes_checkpoints(gpt2_dir, text_file, tmp_path, capsys):
    from transformers import GPT2LMHeadModel

    model = tmp_path / "model"
    shutil.copytree(gpt2_dir, model)
    out = str(tmp_path / "a.h5")
    base = ["extract", "--model", str(model), "--stimuli", text_file, "--out", out, "--batch_size", "1",
            "--segment_mb", "0.0001", "--layers", "transformer.h.0", *CPU_FLAGS]  # fmt: skip
    r = run_cli(*base, extra_env={"LOCALIZER_FAILPOINT": "after-commit:2"})
    assert r.returncode != 0 and not os.path.exists(out)
    m = GPT2LMHeadModel.from_pretrained(model)
    with __import__("torch").no_grad():
        m.transformer.h[1].mlp.c_fc.weight[-1, -1] += 1.0  # far beyond the first 4096 values of any tensor
    m.save_pretrained(model)
    msg = one_error(capsys, base, "extract")
    assert "partial extraction made with other settings" in msg and "weights" in msg


def test_resume_on_a_finished_file_compares_settings_and_can_add_the_selection(gpt2_dir, text_file, tmp_path, capsys):
    out = str(tmp_path / "a.h5")
    base = ["extract", "--model", gpt2_dir, "--stimuli", text_file, "--out", out, *CPU_FLAGS]
    assert main([*base, "--layers", "transformer.h.0"]) == 0
    msg = one_error(capsys, [*base, "--layers", "transformer.h.1", "--resume"], "extract")
    assert "is complete but was recorded with other settings" in msg and "layers" in msg
    sel = tmp_path / "sel.h5"
    assert main([*base, "--layers", "transformer.h.0", "--resume", "--selection", str(sel), "--count", "3"]) == 0
    direct = localizer.select(out, str(tmp_path / "direct.h5"), count=3, log_dir=None)
    np.testing.assert_array_equal(localizer.Selection.read(sel).mask, direct.mask)


def test_ablate_finds_the_recorded_model_from_any_folder(gpt2_dir, text_file, tmp_path, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    shutil.copytree(gpt2_dir, work / "m")
    shutil.copytree(gpt2_dir, elsewhere / "m")  # same name, other weights below
    import torch
    from transformers import GPT2LMHeadModel

    other = GPT2LMHeadModel.from_pretrained(elsewhere / "m")
    with torch.no_grad():
        other.transformer.h[0].attn.c_attn.weight.mul_(3)
    other.save_pretrained(elsewhere / "m")
    monkeypatch.chdir(work)
    localizer.extract("m", text_file, "a.h5", layers="transformer.h.*", trainer=CPU)
    localizer.select("a.h5", "s.h5", count=4, controls=2, log_dir=None)
    task = write_jsonl(work / "task.jsonl", [{"text": r["text"]} for r in make_texts(8, seed=2)])
    here = localizer.ablate("s.h5", "next-token", task_data=task, log_dir=None, trainer=CPU)
    monkeypatch.chdir(elsewhere)
    there = localizer.ablate(str(work / "s.h5"), "next-token", task_data=task, log_dir=None, trainer=CPU)
    assert there["baseline"] == here["baseline"]  # the recorded (resolved) model, not ./m of this folder
    with pytest.raises(localizer.LocalizerError, match="is not the one"):
        localizer.ablate(str(work / "s.h5"), "next-token", model="m", task_data=task, log_dir=None, trainer=CPU)


def test_a_percent_sign_in_the_output_name(gpt2_dir, text_file, tmp_path):
    plain = localizer.extract(gpt2_dir, text_file, str(tmp_path / "plain.h5"), layers="transformer.h.0",
                              segment_mb=0.001, trainer=CPU)  # fmt: skip
    odd = localizer.extract(gpt2_dir, text_file, str(tmp_path / "100%b d%%.h5"), layers="transformer.h.0",
                            segment_mb=0.001, trainer=CPU)  # fmt: skip
    a, b = file_contents(plain), file_contents(odd)
    assert np.isfinite(b["activations/transformer.h.0"]).all()
    np.testing.assert_array_equal(a["activations/transformer.h.0"], b["activations/transformer.h.0"])
    assert [r.problems for r in localizer.check([str(odd)])] == [[]]


def test_counts_and_kinds_are_checked(tmp_path, capsys, acts):
    a = str(acts)
    msg = one_error(capsys, ["select", "--activations", a, "--out", str(tmp_path / "s.h5"), "--controls", "1000000"],
                    "select")  # fmt: skip
    assert "--controls 1000000 is more than 1000" in msg
    msg = one_error(capsys, ["select", "--activations", a, "--out", str(tmp_path / "s.h5"), "--fdr", "1e-300"],
                    "select")  # fmt: skip
    assert "selects nothing" in msg and not (tmp_path / "s.h5").exists()
    from localizer.ablation.ablate import control_kinds

    assert control_kinds("global,global, layer_matched") == ["global", "layer_matched"]


def test_check_refuses_a_named_pipe_without_waiting(tmp_path, capsys):
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    assert "is not a regular file" in one_error(capsys, ["check", str(fifo)], "check")
    argv = ["select", "--activations", str(fifo), "--out", str(tmp_path / "s.h5")]
    assert "not a regular file" in one_error(capsys, argv, "select")
    msg = one_error(capsys, ["extract", "--model", "m", "--stimuli", str(fifo), "--out", str(tmp_path / "a.h5")],
                    "extract")  # fmt: skip
    assert "not a regular file" in msg


@pytest.mark.slow
def test_ctrl_c_exits_130_and_the_rerun_resumes(gpt2_dir, text_file, tmp_path):
    out = tmp_path / "a.h5"
    args = ["extract", "--model", gpt2_dir, "--stimuli", text_file, "--out", out, "--batch_size", 1, "--segment_mb",
            "0.0001", "--layers", "transformer.h.0", *CPU_FLAGS]  # fmt: skip
    r = run_cli(*args, extra_env={"LOCALIZER_FAILPOINT_SIGINT": "after-commit:1"})
    assert r.returncode == 130, r.stderr[-2000:]
    assert "localizer extract: interrupted (committed segments are kept: rerun the same command to resume)" in r.stderr
    assert not out.exists() and len(list((tmp_path / "a.h5.shards").glob("part-*.h5"))) >= 2
    r = run_cli(*args)
    assert r.returncode == 0 and "resuming" in r.stderr + r.stdout, r.stderr[-2000:]


def test_texts_longer_than_the_model_are_truncated_and_empty_ones_refused(gpt2_dir, tmp_path, capsys):
    from transformers import AutoModel, AutoTokenizer

    rows = make_texts(10, seed=5)
    rows[3]["text"] = " ".join(["the cat sat"] * 40)  # 120 words: more than the 64 positions of the test GPT-2
    long = write_jsonl(tmp_path / "long.jsonl", rows)
    with pytest.warns(UserWarning, match="1 of 10 stimulus texts are longer than the model's 64 positions"):
        out = localizer.extract(gpt2_dir, long, str(tmp_path / "a.h5"), layers="transformer.h.0", pooling="last",
                                trainer=CPU)  # fmt: skip
    tok, model = AutoTokenizer.from_pretrained(gpt2_dir), AutoModel.from_pretrained(gpt2_dir)
    ids = tok(rows[3]["text"], return_tensors="pt", truncation=True, max_length=64)["input_ids"]
    import torch

    with torch.no_grad():
        want = model(ids, output_hidden_states=True).hidden_states[1][0, -1].numpy()  # block 0, token 64
    np.testing.assert_allclose(file_contents(out)["activations/transformer.h.0"][3], want, rtol=1e-4, atol=1e-5)

    from tokenizers import normalizers  # a tokenizer that drops zero-width spaces: such a text has no token at all

    shutil.copytree(gpt2_dir, tmp_path / "m")
    tok.backend_tokenizer.normalizer = normalizers.Replace("\u200b", "")
    tok.save_pretrained(tmp_path / "m")
    rows[5]["text"] = "\u200b\u200b"
    empty = write_jsonl(tmp_path / "empty.jsonl", rows)
    msg = one_error(capsys, ["extract", "--model", str(tmp_path / "m"), "--stimuli", empty, "--out",
                             str(tmp_path / "e.h5"), *CPU_FLAGS], "extract")  # fmt: skip
    assert "stimulus 5" in msg and "has no tokens" in msg


def test_sixteen_bit_images_are_scaled_not_clipped():
    from PIL import Image

    from localizer.recording.datamodule import to_rgb

    ramp = (np.arange(256 * 4, dtype=np.uint32).reshape(4, 256) * 64).clip(0, 65535).astype(np.uint16)
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    got = np.asarray(to_rgb(image))[..., 0]
    np.testing.assert_array_equal(got, np.rint(ramp / 257).astype(np.uint8))
    assert len(np.unique(got)) > 200  # a clip to 255 would leave a handful of values
    f = Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8))
    assert np.asarray(to_rgb(f))[..., 0].max() == 255


def test_weights_that_do_not_fit_are_refused(gpt2_dir, bert_dir, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    shutil.copytree(gpt2_dir, mixed)
    shutil.copy(os.path.join(bert_dir, "model.safetensors"), mixed / "model.safetensors")  # GPT-2 config, BERT weights
    msg = one_error(capsys, ["extract", "--model", str(mixed), "--stimuli", "tom", "--out", str(tmp_path / "a.h5"),
                             *CPU_FLAGS], "extract")  # fmt: skip
    assert "its weights do not fit GPT2LMHeadModel" in msg and "missing keys" in msg
    (mixed / "model.safetensors").write_bytes(b"\0" * 100)  # damaged
    msg = one_error(capsys, ["extract", "--model", str(mixed), "--stimuli", "tom", "--out", str(tmp_path / "a.h5"),
                             *CPU_FLAGS], "extract")  # fmt: skip
    assert "cannot load weights" in msg


def test_metrics_that_cannot_be_computed_are_null(gpt2_dir, text_file, tmp_path, capsys):
    import json

    a = localizer.extract(gpt2_dir, text_file, str(tmp_path / "a.h5"), layers="transformer.h.*", trainer=CPU)
    localizer.select(str(a), str(tmp_path / "s.h5"), count=3, controls=2, log_dir=None)
    one_word = write_jsonl(tmp_path / "t.jsonl", [{"text": "cat"}, {"text": "dog"}])  # nothing to predict
    argv = ["ablate", "--selection", str(tmp_path / "s.h5"), "--task", "next-token", "--task_data", one_word,
            "--out", str(tmp_path / "r.json"), "--log_dir", "null", *CPU_FLAGS]  # fmt: skip
    with pytest.warns(UserWarning, match="could not be computed"):
        assert main(argv) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["baseline"]["accuracy"] is None and doc["delta"]["localized"]["cross_entropy"] is None
    assert "accuracy: baseline n/a" in capsys.readouterr().out
    msg = one_error(capsys, [*argv[:-4], "--method", "scale=nan", "--overwrite"], "ablate")
    assert "--method must be zero, mean or scale=F" in msg


def test_numbers_out_of_range_are_one_line(gpt2_dir, text_file, tmp_path, capsys, acts):
    base = ["extract", "--model", gpt2_dir, "--stimuli", text_file, "--out", str(tmp_path / "x.h5"), *CPU_FLAGS]
    for option, value, message in (("--max_length", "0", "--max_length must be >= 1"),
                                   ("--num_workers", "-1", "--num_workers must be >= 0"),
                                   ("--batch_size", "0", "--batch_size must be >= 1")):  # fmt: skip
        assert message in one_error(capsys, [*base, option, value], "extract")
    msg = one_error(capsys, ["select", "--activations", str(acts), "--out", str(tmp_path / "s.h5"), "--seed", "-1"],
                    "select")  # fmt: skip
    assert "--seed must be >= 0" in msg
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "s.h5").exists()


def test_a_transform_with_channels_last_is_named(resnet_dir, image_folder, tmp_path, capsys):
    argv = ["extract", "--model", resnet_dir, "--stimuli", image_folder, "--out", str(tmp_path / "a.h5"),
            "--transform", "numpy:asarray", *CPU_FLAGS]  # fmt: skip
    msg = one_error(capsys, argv, "extract")
    assert "channels last" in msg or "return [C, H, W]" in msg


def test_select_and_ablate_refuse_files_that_check_refuses(tmp_path, capsys):
    layers, positive = synthetic(n_pos=10, n_ctl=10, units=(12,))
    lying = write_activation_file(tmp_path / "n.h5", layers, positive)
    with h5py.File(lying, "a") as f:
        f.attrs["n_stimuli"] = 7  # the datasets hold 20 rows
    ints = write_activation_file(tmp_path / "i.h5", layers, positive)
    with h5py.File(ints, "a") as f:
        del f["positive"]
        f["positive"] = positive.astype(np.int64)
    for path in (lying, ints):
        found = localizer.check([str(path)])[0].problems
        assert found, path
        msg = one_error(capsys, ["select", "--activations", str(path), "--out", str(tmp_path / "s.h5")], "select")
        assert found[0] in msg and not (tmp_path / "s.h5").exists()


def test_a_layer_that_runs_twice_per_forward_is_refused():
    import torch

    from localizer.recording.recorder import ActivationRecorder

    class Shared(torch.nn.Module):  # one block applied at two depths (ALBERT's shared layer group)
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 8)
            self.block = torch.nn.Linear(8, 8)

        def forward(self, input_ids, attention_mask=None):
            return self.block(torch.relu(self.block(self.embed(input_ids))))

    batch = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    with pytest.raises(localizer.LocalizerError, match=r"'block' runs 2 times in one forward pass"):
        ActivationRecorder(Shared(), "block", "mean", modality="text")(batch)
    once = ActivationRecorder(Shared(), "embed", "mean", modality="text")(batch)  # a module that runs once is fine
    assert once["embed"].shape == (1, 8)


class SmallDisk:
    """A 3 MB disk: a real tmpfs where one can be mounted (root, a mount namespace), else a folder that localizer
    treats as a disk of that capacity (``LOCALIZER_TEST_DISK``). The test runs either way; ``real`` says which."""

    def __init__(self, path, real: bool):
        self.path, self.real, self.size = path, real, 3 << 20

    @property
    def env(self) -> dict:
        return {} if self.real else {"LOCALIZER_TEST_DISK": f"{self.path}:{self.size}"}

    def grow(self, size: int) -> None:
        import subprocess

        self.size = size
        if self.real:
            subprocess.run(["mount", "-o", f"remount,size={size // 1024}k", str(self.path)], check=True)

    def free(self) -> int:
        from localizer.files.segments import free_bytes

        os.environ.update(self.env)
        try:
            return free_bytes(self.path)
        finally:
            os.environ.pop("LOCALIZER_TEST_DISK", None)


@pytest.fixture
def small_disk(tmp_path):
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    yield SmallDisk(mnt, real=r.returncode == 0)
    if r.returncode == 0:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_rerun_resumes(gpt2_dir, tmp_path, small_disk):
    stimuli = write_jsonl(tmp_path / "s.jsonl", make_texts(10000, seed=9))
    args = ["extract", "--model", gpt2_dir, "--stimuli", stimuli, "--pooling", "mean", "--batch_size", 64,
            "--segment_mb", "0.2", *CPU_FLAGS]  # fmt: skip
    disk = small_disk.path
    out = disk / "a.h5"
    r = run_cli(*args, "--out", out, extra_env=small_disk.env)
    assert r.returncode == 2, r.stderr[-3000:]  # not 139 (segfault), not 1 (traceback)
    errors = [line for line in r.stderr.splitlines() if line.startswith("localizer extract: error:")]
    assert len(errors) == 1 and "no space left on the device" in errors[0] and "Traceback" not in r.stderr
    committed = sorted((disk / "a.h5.shards").glob("part-*.h5"))
    assert committed and not out.exists() and not list((disk / "a.h5.shards").glob("*.part"))
    small_disk.grow(16 << 20)
    r = run_cli(*args, "--out", out, extra_env=small_disk.env)
    assert r.returncode == 0 and "resuming" in r.stderr + r.stdout, r.stderr[-3000:]
    assert run_cli(*args, "--out", tmp_path / "ref.h5").returncode == 0
    a, b = file_contents(out), file_contents(tmp_path / "ref.h5")
    for layer in ("activations/transformer.h.0", "activations/transformer.h.1"):
        np.testing.assert_allclose(a[layer], b[layer], rtol=1e-5, atol=1e-6)  # batches differ after a resume

    (disk / "filler").write_bytes(b"\0" * (small_disk.free() - (256 << 10)))
    r = run_cli("select", "--activations", tmp_path / "ref.h5", "--out", disk / "s.h5", "--count", 5, "--log_dir",
                "null", extra_env=small_disk.env)  # fmt: skip
    assert r.returncode == 2 and "no space left on the device" in r.stderr and "Traceback" not in r.stderr
    assert not (disk / "s.h5").exists() and not (disk / "s.h5.tmp").exists()


def test_a_failed_master_write_keeps_the_segments_for_the_rerun(gpt2_dir, text_file, tmp_path):
    """ENOSPC injected where the master is written (every row is committed by then): one line, exit 2, no master;
    the rerun records nothing again and writes the master."""
    args = ["extract", "--model", gpt2_dir, "--stimuli", text_file, "--out", tmp_path / "a.h5", "--segment_mb",
            "0.001", "--layers", "transformer.h.0", *CPU_FLAGS]  # fmt: skip
    r = run_cli(*args, extra_env={"LOCALIZER_FAILPOINT_RAISE": "space:the master file"})
    assert r.returncode == 2 and "injected failure at space:the master file" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "a.h5").exists() and not (tmp_path / "a.h5.tmp").exists()
    r = run_cli(*args)
    assert r.returncode == 0 and "37 of 37 stimuli already recorded" in r.stderr + r.stdout, r.stderr[-2000:]
    assert localizer.check([str(tmp_path / "a.h5")])[0].ok


def test_more_bad_environments_are_one_line(gpt2_dir, text_file, image_folder, tmp_path, capsys, acts):
    import struct
    import zlib

    (tmp_path / "afile").write_text("")
    argv = [
        "select",
        "--activations",
        str(acts),
        "--out",
        str(tmp_path / "s.h5"),
        "--log_dir",
        str(tmp_path / "afile" / "logs"),
    ]
    assert "is a file, not a folder" in one_error(capsys, argv, "select")
    assert not (tmp_path / "s.h5").exists()  # refused before anything was written
    base = ["extract", "--model", gpt2_dir, "--stimuli", text_file, "--out", str(tmp_path / "x.h5")]
    import torch

    if not torch.cuda.is_available():
        assert "invalid trainer options" in one_error(capsys, [*base, "--trainer.accelerator", "gpu"], "extract")
    assert "invalid strategy name" in one_error(capsys, [*base, "--trainer.strategy", "bogus"], "extract")

    bombs = tmp_path / "bombs"
    shutil.copytree(image_folder, bombs)
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)  # a PNG header that claims 30000 x 30000 pixels
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    (bombs / "positive" / "huge.png").write_bytes(png + b"\0" * 64)
    msg = one_error(capsys, ["extract", "--model", gpt2_dir, "--stimuli", str(bombs), "--out", str(tmp_path / "b.h5")],
                    "extract")  # fmt: skip
    assert "huge.png" in msg and "unreadable image" in msg
