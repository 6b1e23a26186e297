"""Stimulus loading from every source, and clear one-line errors (exit code 2) for bad input."""

from __future__ import annotations

import datasets
import pytest
from helpers import make_texts, write_jsonl

from localizer.cli import main
from localizer.errors import LocalizerError
from localizer.recording.stimuli import load_stimuli


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
    dd = datasets.DatasetDict(
        {
            "localize": datasets.Dataset.from_list(rows[:6]).remove_columns("split"),
            "validation": datasets.Dataset.from_list(rows[6:]).remove_columns("split"),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    ds = load_stimuli(tmp_path / "dd")
    assert ds["split"] == ["localize"] * 6 + ["validation"] * 2


# --- errors (the catalogue of bad input is tests/test_catalogue.py) --------------------------------------------


def test_python_api_raises_localizer_error(gpt2_dir, tmp_path):
    stimuli = write_jsonl(tmp_path / "s.jsonl", [{"text": "a", "positive": True}, {"text": "b", "positive": False}])
    with pytest.raises(LocalizerError, match="matches no module"):
        from localizer import extract

        extract(gpt2_dir, stimuli, tmp_path / "x.h5", layers="nothing.here")
