"""--sort_by_length batches texts of similar length together and still writes the file in dataset order."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from helpers import file_contents, make_texts, write_jsonl

import localizer
from localizer.errors import LocalizerError
from localizer.recording.datamodule import LocalizerDataModule

CPU = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}


@pytest.mark.parametrize("world", [1, 2])
def test_each_rank_gets_its_usual_rows_sorted_within_windows(gpt2_dir, world):
    import datasets
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    ds = datasets.Dataset.from_list(make_texts(150, seed=4))
    data = LocalizerDataModule(ds, tok, batch_size=4, sort_by_length=True, window_batches=3)
    served = data.served_rows(world)
    lengths = np.array(data.token_counts())
    assert sorted(served) == list(range(150))
    for r in range(world):
        mine = served[r::world]  # what Lightning's strided sampler gives rank r
        assert sorted(mine) == list(range(r, 150, world))
        for w in range(0, len(mine), 12):
            window = mine[w : w + 12]
            assert sorted(window) == list(range(r, 150, world))[w : w + 12]  # the same rows as without sorting
            assert (np.diff(lengths[window]) <= 0).all()  # longest first


def padded_tokens(order, lengths, batch):
    return sum(max(lengths[order[i : i + batch]]) * len(order[i : i + batch]) for i in range(0, len(order), batch))


def test_sorted_extraction_writes_the_same_file_with_less_padding(gpt2_dir, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    import localizer.recording.datamodule as dm

    seen: list[tuple[int, int]] = []  # (rows, padded width) of every batch the model got
    real_pad = dm.TokenTable.pad

    def spy(self, rows, tokenizer):
        out = real_pad(self, rows, tokenizer)
        seen.append(tuple(out["input_ids"].shape))
        return out

    monkeypatch.setattr(dm.TokenTable, "pad", spy)
    stimuli = write_jsonl(tmp_path / "s.jsonl", make_texts(150, seed=4))
    common = {"model": gpt2_dir, "stimuli": stimuli, "batch_size": 4, "pooling": "mean", "trainer": CPU}
    plain = localizer.extract(out=tmp_path / "a.h5", **common)
    padded_plain = sum(r * w for r, w in seen)
    seen.clear()
    ordered = localizer.extract(out=tmp_path / "b.h5", sort_by_length=True, layout="virtual", **common)
    assert sum(r * w for r, w in seen) < 0.9 * padded_plain
    a, b = file_contents(plain), file_contents(ordered)
    assert sorted(a) == sorted(b)
    for name in a:
        if name == "attrs":
            continue
        if a[name].dtype.kind == "f":
            np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    for segment in (tmp_path / "b.h5.shards").glob("*.h5"):  # rows went back to dataset order on disk
        with h5py.File(segment) as f:
            assert (np.diff(f["index"][:]) > 0).all()
    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    import datasets

    ds = datasets.Dataset.from_list(make_texts(150, seed=4))
    data = LocalizerDataModule(ds, tok, batch_size=4, sort_by_length=True)
    lengths = np.array(data.token_counts())
    assert padded_tokens(data.served_rows(1), lengths, 4) < 0.9 * padded_tokens(np.arange(150), lengths, 4)


def test_sort_by_length_is_for_text(resnet_dir, image_folder, tmp_path):
    with pytest.raises(LocalizerError, match="sort_by_length"):
        localizer.extract(model=resnet_dir, stimuli=image_folder, out=tmp_path / "a.h5", sort_by_length=True,
                          trainer=CPU)  # fmt: skip
    assert not (tmp_path / "a.h5").exists()
