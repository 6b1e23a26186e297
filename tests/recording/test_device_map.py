"""--device_map: a model placed across devices by transformers/accelerate (here the CPU and the disk, the only
devices this machine has) records and ablates exactly as the same model held whole in one process."""

from __future__ import annotations

import gc
import tempfile

import h5py
import numpy as np
import pytest
from helpers import CPU

import localizer
from localizer.errors import LocalizerError
from localizer.selection import Selection, SelectionOptions

SMALL = "cpu=80KB"  # room for the embeddings (tied to the head): the blocks go to the disk


def offload_folders(root) -> list:
    return sorted(p.name for p in root.glob("localizer-offload-*"))


def test_blocks_on_the_disk_record_and_ablate_as_the_whole_model(gpt2_dir, text_file, tmp_path, monkeypatch):
    from localizer.recording.extract import record
    from localizer.recording.models import load_model

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the offloaded weights go
    loaded = load_model(gpt2_dir, "text", device_map="auto", max_memory=SMALL)
    placed = loaded.model.hf_device_map
    assert "disk" in placed.values() and "cpu" in placed.values(), placed  # really split
    assert len(offload_folders(tmp_path)) == 1
    common = {"layers": "transformer.h.*", "pooling": "mean", "batch_size": 3, "trainer": CPU}
    mapped = record(loaded, text_file, tmp_path / "mapped.h5", selection=tmp_path / "mapped_sel.h5",
                    selection_options=SelectionOptions(top="10%"), **common)  # fmt: skip
    whole = localizer.extract(model=gpt2_dir, stimuli=text_file, out=tmp_path / "whole.h5",
                              selection=tmp_path / "whole_sel.h5", top="10%", **common)  # fmt: skip
    with h5py.File(mapped) as f, h5py.File(whole) as g:
        for layer in ("transformer.h.0", "transformer.h.1"):
            np.testing.assert_allclose(f[f"activations/{layer}"][:], g[f"activations/{layer}"][:], atol=1e-6)
    a, b = Selection.read(tmp_path / "mapped_sel.h5"), Selection.read(tmp_path / "whole_sel.h5")
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.stats["t"], b.stats["t"], rtol=1e-5, atol=1e-6)
    del loaded
    gc.collect()
    assert offload_folders(tmp_path) == []  # localizer deletes the offload folder it made

    task = {"task": "next-token", "controls": "global", "n_controls": 2, "batch_size": 4, "log_dir": None}
    on_map = localizer.ablate(str(tmp_path / "whole_sel.h5"), device_map="auto", max_memory=SMALL, trainer=CPU,
                              **task)  # fmt: skip
    plain = localizer.ablate(str(tmp_path / "whole_sel.h5"), trainer=CPU, **task)
    for part in ("baseline", "localized"):
        for metric, value in plain[part].items():
            assert on_map[part][metric] == pytest.approx(value, abs=1e-6), (part, metric)
    gc.collect()
    assert offload_folders(tmp_path) == []


@pytest.mark.parametrize(
    "options, message",
    [
        ({"device_map": "everywhere"}, r"unknown .*device_map 'everywhere'; choose one of auto"),
        ({"device_map": "{not json"}, r"device_map.*: not a JSON object"),
        ({"max_memory": "cpu=1GB"}, r"max_memory.* applies with .*device_map"),
        ({"device_map": "auto", "max_memory": "cpu"}, r"'cpu' is not DEVICE=SIZE"),
        ({"device_map": "auto", "max_memory": "0=20GiB, cpu=lots"}, r"'cpu=lots' is not DEVICE=SIZE"),
    ],
)
def test_bad_device_map_options_are_refused_in_one_line(gpt2_dir, options, message):
    from localizer.recording.models import load_model

    with pytest.raises(LocalizerError, match=message):
        load_model(gpt2_dir, "text", **options)


def test_a_device_map_runs_in_one_process(gpt2_dir, text_file, tmp_path, monkeypatch):
    import localizer.recording.models as models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were refused")

    with monkeypatch.context() as m:
        m.setattr(models, "_load_hf", no_loading)
        with pytest.raises(LocalizerError, match="runs in one process .*unset \\(got devices 2, strategy ddp\\)"):
            localizer.extract(model=gpt2_dir, stimuli=text_file, out=tmp_path / "a.h5", device_map="auto",
                              max_memory=SMALL, trainer={**CPU, "devices": 2, "strategy": "ddp"})  # fmt: skip
    assert not (tmp_path / "a.h5").exists()
    with pytest.raises(LocalizerError, match="places Hugging Face models"):
        localizer.extract(model="torchvision.models:resnet18", stimuli=text_file, out=tmp_path / "b.h5",
                          device_map="auto", trainer=CPU)  # fmt: skip
