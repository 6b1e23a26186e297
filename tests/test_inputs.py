"""Stimulus loading from every source, and clear one-line errors (exit code 2) for bad input."""

from __future__ import annotations

import subprocess
import sys

import datasets
import pytest

from conftest import make_texts, write_jsonl
from localizer.cli import main
from localizer.errors import LocalizerError
from localizer.stimuli import load_stimuli


def cli_error(capsys, *args) -> str:
    """Run the CLI in-process; assert exit code 2 and a single-line message without traceback; return it."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("localizer")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- loading stimuli ---------------------------------------------------------------------------------------------

def test_file_formats_and_disk_dataset_agree(tmp_path):
    rows = make_texts(11)
    ds = datasets.Dataset.from_list(rows)
    sources = {
        "jsonl": write_jsonl(tmp_path / "s.jsonl", rows),
        "csv": tmp_path / "s.csv",
        "parquet": tmp_path / "s.parquet",
        "disk": tmp_path / "disk",
    }
    ds.to_csv(str(sources["csv"]))
    ds.to_parquet(str(sources["parquet"]))
    ds.save_to_disk(str(sources["disk"]))
    for kind, src in sources.items():
        got = load_stimuli(src)
        assert got["text"] == [r["text"] for r in rows], kind
        assert got["positive"] == [r["positive"] for r in rows], kind
        assert got["split"] == [r["split"] for r in rows], kind


def test_two_sources_by_dataset_id(tmp_path):
    """Two dataset repositories (the hub-id code path, here local folders): positive and control, column by type."""
    for name, words in (("pos", ["a real sentence", "another one here"]), ("ctrl", ["blick fep", "zorp"])):
        (tmp_path / name).mkdir()
        write_jsonl(tmp_path / name / "train.jsonl", [{"sentence": w, "id": i} for i, w in enumerate(words)])
    ds = load_stimuli(tmp_path / "pos", control=tmp_path / "ctrl")
    assert ds["text"] == ["a real sentence", "another one here", "blick fep", "zorp"]
    assert ds["positive"] == [True, True, False, False]


def test_image_folder(image_folder):
    ds = load_stimuli(image_folder)
    assert len(ds) == 37 and sum(ds["positive"]) == 19
    assert ds["image"][0].size[0] >= 20


def test_datasetdict_splits_become_a_split_column(tmp_path):
    rows = make_texts(8)
    dd = datasets.DatasetDict({"localize": datasets.Dataset.from_list(rows[:6]).remove_columns("split"),
                               "validation": datasets.Dataset.from_list(rows[6:]).remove_columns("split")})
    dd.save_to_disk(str(tmp_path / "dd"))
    ds = load_stimuli(tmp_path / "dd")
    assert ds["split"] == ["localize"] * 6 + ["validation"] * 2


# --- errors ------------------------------------------------------------------------------------------------------

def test_unknown_layer_pattern_lists_candidates(capsys, gpt2_dir, text_file, tmp_path):
    msg = cli_error(capsys, "extract", "--model", gpt2_dir, "--stimuli", text_file, "--layers", "transformer.x.*",
                    "--out", tmp_path / "a.h5")
    assert "'transformer.x.*' matches no module" in msg and "transformer.h.*" in msg
    assert not (tmp_path / "a.h5").exists()


@pytest.mark.parametrize("rows,expected", [
    ([{"text": "a b", "label": 1}, {"text": "c", "label": 0}], "missing the bool column 'positive'"),
    ([{"text": "a b", "positive": True}, {"text": "c", "positive": True}], "only one class present"),
    ([{"text": "a b", "positive": 1}, {"text": "c", "positive": 0}], "'positive' must be bool"),
    ([{"text": "a b", "positive": True}, {"text": "  ", "positive": False}], "stimulus 1 has an empty"),
    ([{"text": "a", "positive": True, "split": "train"}, {"text": "b", "positive": False, "split": "validation"}],
     "'split' may only hold"),
    ([{"words": "a", "positive": True}, {"words": "b", "positive": False}], "exactly one of the columns"),
])
def test_bad_stimuli(capsys, gpt2_dir, tmp_path, rows, expected):
    stimuli = write_jsonl(tmp_path / "bad.jsonl", rows)
    msg = cli_error(capsys, "extract", "--model", gpt2_dir, "--stimuli", stimuli, "--out", tmp_path / "a.h5")
    assert expected in msg and "bad.jsonl" in msg
    assert not (tmp_path / "a.h5").exists()


def test_unreadable_image(capsys, resnet_dir, tmp_path):
    for sub in ("positive", "control"):
        (tmp_path / "imgs" / sub).mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "positive" / "ok.png")
    (tmp_path / "imgs" / "control" / "broken.png").write_bytes(b"\x89PNG not really")
    msg = cli_error(capsys, "extract", "--model", resnet_dir, "--stimuli", tmp_path / "imgs",
                    "--out", tmp_path / "a.h5")
    assert "broken.png: unreadable image" in msg


@pytest.mark.parametrize("case", ["model", "empty", "existing", "folder", "pooling", "more_procs", "option"])
def test_other_input_errors(capsys, gpt2_dir, text_file, tmp_path, case):
    args = {"model": gpt2_dir, "stimuli": text_file, "out": tmp_path / "a.h5"}
    extra, expected = [], ""
    if case == "model":
        args["model"], expected = tmp_path / "nope", "not a model directory"
    elif case == "empty":
        (tmp_path / "e.jsonl").write_text("")
        args["stimuli"], expected = tmp_path / "e.jsonl", "empty"
    elif case == "existing":
        (tmp_path / "a.h5").write_text("x")
        expected = "exists; pass --overwrite"
    elif case == "folder":
        (tmp_path / "afile").write_text("")
        args["out"], expected = tmp_path / "afile" / "a.h5", "is a file, not a folder"
    elif case == "pooling":
        extra, expected = ["--pooling", "channel"], "does not fit text stimuli"
    elif case == "more_procs":
        rows = make_texts(2)
        args["stimuli"] = write_jsonl(tmp_path / "two.jsonl", rows)
        extra = ["--trainer.accelerator", "cpu", "--trainer.devices", "3", "--trainer.strategy", "ddp"]
        expected = "3 processes for 2 stimuli"
    elif case == "option":
        extra, expected = ["--no-such-option", "1"], "no-such-option"
    msg = cli_error(capsys, "extract", *[x for k, v in args.items() for x in (f"--{k}", v)], *extra)
    assert expected in msg
    if case != "existing":
        assert not (tmp_path / "a.h5").exists()


def test_real_process_exit_code_and_no_traceback(tmp_path, gpt2_dir):
    stimuli = write_jsonl(tmp_path / "one.jsonl", [{"text": "a", "positive": True}])
    r = subprocess.run([sys.executable, "-m", "localizer", "extract", "--model", gpt2_dir, "--stimuli", stimuli,
                        "--out", tmp_path / "a.h5"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("localizer extract: error:")


def test_python_api_raises_localizer_error(gpt2_dir, tmp_path):
    stimuli = write_jsonl(tmp_path / "s.jsonl", [{"text": "a", "positive": True}, {"text": "b", "positive": False}])
    with pytest.raises(LocalizerError, match="matches no module"):
        from localizer import extract

        extract(gpt2_dir, stimuli, tmp_path / "x.h5", layers="nothing.here")
