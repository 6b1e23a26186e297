"""The master file maps shard rows by their dataset indices and refuses anything but exact coverage."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from localizer.errors import LocalizerError
from localizer.files.activations import read_metadata, segment_dir, strided_runs, write_master
from localizer.files.segments import SegmentWriter

META = {"model": "m", "model_class": "C", "pooling": "last", "layers": ["a", "b"]}


def write_shards(out, parts, units=(3, 5), seed=0):
    """parts: one index array per rank → shards whose rows are f(index), so the expected master is known."""
    rng = np.random.default_rng(seed)
    table = {layer: rng.normal(size=(100, u)).astype(np.float32) for layer, u in zip("ab", units)}
    for rank, idx in enumerate(parts):
        w = SegmentWriter(segment(out, rank))
        idx = np.asarray(idx, dtype=np.int64)
        for chunk in np.array_split(idx, max(1, len(idx) // 3)) if len(idx) else []:
            w.append(chunk, chunk % 2 == 0, [f"s{i}" for i in chunk], {k: v[chunk] for k, v in table.items()})
        w.commit(["a", "b"])
    return table


def segment(out, rank, seq=0):
    return segment_dir(out) / f"part-0000-{rank:05d}-{seq:06d}.h5"


@pytest.mark.parametrize(
    "parts",
    [
        [np.arange(0, 23, 2), np.arange(1, 23, 2)],  # DDP's r::W order
        [np.array([5, 0, 3, 9, 1]), np.array([2, 8, 4, 7, 6])],  # arbitrary order
        [np.arange(10), np.array([], dtype=np.int64)],  # an idle rank
    ],
)
def test_master_rows_follow_dataset_indices(tmp_path, parts):
    out = tmp_path / "m.h5"
    table = write_shards(out, parts)
    n = sum(len(p) for p in parts)
    write_master(out, n, META)
    with h5py.File(out) as f:
        for layer in "ab":
            assert f[f"activations/{layer}"].is_virtual
            np.testing.assert_array_equal(f[f"activations/{layer}"][:], table[layer][:n])
        np.testing.assert_array_equal(f["index"][:], np.arange(n))
        np.testing.assert_array_equal(f["positive"][:], np.arange(n) % 2 == 0)
        assert f["split"].asstr()[:].tolist() == [f"s{i}" for i in range(n)]
    meta = read_metadata(out)
    assert meta["layers"] == ["a", "b"] and meta["n_stimuli"] == n and meta["model_class"] == "C"
    assert not (tmp_path / "m.h5.tmp").exists()


@pytest.mark.parametrize(
    "parts,expected",
    [
        ([np.arange(0, 10, 2), np.array([1, 3, 5, 7])], "1 missing (e.g. [9])"),
        ([np.arange(0, 10, 2), np.array([1, 3, 5, 7, 9, 4])], "1 duplicated (e.g. [4])"),
        ([np.arange(0, 10, 2), np.array([1, 3, 5, 7, 11])], "1 out of range"),
    ],
)
def test_master_refused_unless_exact_cover(tmp_path, parts, expected):
    out = tmp_path / "m.h5"
    write_shards(out, parts)
    with pytest.raises(LocalizerError, match="refusing") as e:
        write_master(out, 10, META)
    assert expected in str(e.value)
    assert not out.exists() and not (tmp_path / "m.h5.tmp").exists()


def test_open_or_incomplete_segments_are_not_used(tmp_path):
    out = tmp_path / "m.h5"
    write_shards(out, [np.arange(4)])
    w = SegmentWriter(segment(out, 1))  # an open segment (a crashed rank) is not a committed one
    w.append(np.arange(4, 6), np.ones(2, bool), None, {"a": np.zeros((2, 3), np.float32)})
    w.file.flush()
    with pytest.raises(LocalizerError, match="2 missing \\(e.g. \\[4, 5\\]\\)"):
        write_master(out, 6, META)
    w.discard()
    with h5py.File(segment(out, 0), "a") as f:
        f.attrs["complete"] = False
    with pytest.raises(LocalizerError, match="incomplete"):
        write_master(out, 4, META)


def greedy_runs(idx):
    """The runs row by row, as the definition says (the reference)."""
    runs, n, j = [], len(idx), 0
    while j < n:
        if j + 1 < n and idx[j + 1] > idx[j]:
            stride, k = int(idx[j + 1] - idx[j]), j + 1
            while k + 1 < n and idx[k + 1] - idx[k] == stride:
                k += 1
            runs.append((j, int(idx[j]), k - j + 1, stride))
            j = k + 1
        else:
            runs.append((j, int(idx[j]), 1, 1))
            j += 1
    return runs


def test_runs_cover_every_row_once():
    rng = np.random.default_rng(1)
    cases = [np.arange(3, 40, 4), rng.permutation(30), np.array([0, 2, 4, 5, 6, 10, 11, 3]), np.array([7])]
    cases += [np.array([], dtype=np.int64), np.array([5, 5, 5, 6]), np.array([9, 8, 7, 1, 2, 3, 5, 7, 9, 0])]
    cases += [np.cumsum(rng.choice([-2, 0, 1, 1, 2, 3], size=int(rng.integers(1, 60)))) for _ in range(300)]
    for idx in cases:
        rows = []
        for row0, i0, count, stride in strided_runs(idx):
            np.testing.assert_array_equal(idx[row0 : row0 + count], i0 + stride * np.arange(count))
            rows += range(row0, row0 + count)
        assert rows == list(range(len(idx)))
        assert strided_runs(idx) == greedy_runs(idx), idx
    assert len(strided_runs(np.arange(1, 1000, 2))) == 1
    assert strided_runs(np.arange(3, 3 + 2 * 10**6, 2)) == [(0, 3, 10**6, 2)]  # a million rows: one numpy pass


def test_unknown_format_version(tmp_path):
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(LocalizerError, match="format version 99"):
        read_metadata(p)


@pytest.mark.parametrize("buffer_bytes", [1, 200, 1 << 23])  # flush every batch, every few batches, at commit
def test_buffered_segment_writes_every_row_in_order(tmp_path, buffer_bytes, monkeypatch):
    import localizer.files.segments as segments

    hinted = []  # the files whose writeback each written buffer starts (Linux: what the descriptor points to)
    real = segments.start_writeback
    monkeypatch.setattr(segments, "start_writeback", lambda fd: hinted.append(os.readlink(f"/proc/self/fd/{fd}"))
                        or real(fd))  # fmt: skip
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(23, 3)).astype(np.float32), rng.normal(size=(23, 5)).astype(np.float32)
    w = SegmentWriter(tmp_path / "s.h5", buffer_bytes=buffer_bytes)
    for chunk in np.array_split(np.arange(23), 7):
        w.append(chunk, chunk % 3 == 0, [f"s{i}" for i in chunk], {"a": a[chunk], "b": b[chunk]})
    with pytest.raises(LocalizerError, match="changed size from 3 to 4 units"):
        w.append(np.array([23]), np.array([True]), ["s23"], {"a": np.zeros((1, 4), np.float32), "b": b[:1]})
    w.commit(["a", "b"])
    with h5py.File(tmp_path / "s.h5") as f:
        np.testing.assert_array_equal(f["activations/a"][:], a)
        np.testing.assert_array_equal(f["activations/b"][:], b)
        np.testing.assert_array_equal(f["index"][:], np.arange(23))
        assert f["split"].asstr()[:].tolist() == [f"s{i}" for i in range(23)]
        assert f.attrs["complete"] and f.attrs["n_rows"] == 23
    assert hinted and set(hinted) == {str(tmp_path / "s.h5.part")}
    if buffer_bytes != 200:  # one hint per buffer written: 7 appends and the final tail, or all at the commit
        assert len(hinted) == {1: 8, 1 << 23: 1}[buffer_bytes]


def test_writeback_hint_is_taken_on_linux_and_refused_on_a_bad_descriptor(tmp_path):
    from localizer.files.segments import start_writeback

    with open(tmp_path / "f", "wb") as fh:
        fh.write(b"x" * 100_000)
        assert start_writeback(fh.fileno()) is True
    assert start_writeback(-1) is False


def _many_segments(out, n_segments=70, rows=2):
    rng = np.random.default_rng(3)
    table = rng.normal(size=(n_segments * rows, 3)).astype(np.float32)
    for r in range(n_segments):
        w = SegmentWriter(segment(out, 0, r))
        idx = np.arange(r * rows, (r + 1) * rows)
        w.append(idx, idx % 2 == 0, None, {"a": table[idx]})
        w.commit(["a"])
    write_master(out, n_segments * rows, {**META, "layers": ["a"]})
    return table


@pytest.mark.slow
@pytest.mark.parametrize("hard_too", [False, True])
def test_more_segments_than_the_open_file_limit(tmp_path, hard_too):
    """HDF5 reads an unopenable virtual-dataset source as NaN, silently: readers raise the soft limit, and a hard
    limit that is too low is a one-line error, never NaN."""
    import resource
    import subprocess
    import sys

    out = tmp_path / "m.h5"
    _many_segments(out)
    with h5py.File(out) as f:
        assert len(f["activations/a"].virtual_sources()) == 70
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limits = (50, 50 if hard_too else hard)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "localizer",
            "select",
            "--activations",
            str(out),
            "--out",
            str(tmp_path / "s.h5"),
            "--count",
            "1",
            "--controls",
            "0",
            "--log_dir",
            str(tmp_path / "tb"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limits),
    )
    if hard_too:
        assert r.returncode == 2
        assert "reads from 70 segment files, but this process may open at most 50 files" in r.stderr
    else:
        assert r.returncode == 0, r.stderr[-2000:]
        with h5py.File(tmp_path / "s.h5") as f:
            assert f.attrs["n_positive"] == 70 and f.attrs["n_control"] == 70  # every row was read, none NaN


@pytest.mark.parametrize("seed", range(8))
def test_whole_chunks_written_directly_and_the_last_partial_one_at_commit(tmp_path, seed):
    """Rows go to the file a whole HDF5 chunk at a time (the rest waits for the next buffer); whatever the batch
    sizes, buffer boundaries and chunk sizes, and with rows out of order inside a buffer (batched by length), the
    committed segment holds exactly the rows, in dataset order, and its extent ends at the last row."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    a, b = rng.normal(size=(n, 3)).astype(np.float32), rng.normal(size=(n, 5)).astype(np.float32)
    w = SegmentWriter(tmp_path / "s.h5", chunk_bytes=int(rng.integers(4, 100)), buffer_bytes=float("inf"))
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(n - 1, int(rng.integers(0, 8))), replace=False))
    for window in np.split(np.arange(n), cuts):  # each window: its rows in a random order, then written
        order = rng.permutation(window)
        for batch in np.array_split(order, max(1, len(order) // 3)):
            if len(batch):
                w.append(batch, batch % 2 == 0, None, {"a": a[batch], "b": b[batch]})
        w.flush() if rng.random() < 0.3 else w.write_behind()  # a flush writes a partial chunk, completed later
    w.commit(["a", "b"])
    with h5py.File(tmp_path / "s.h5") as f:
        assert f["activations/a"].chunks[0] == max(1, min(4096, w.chunk_bytes // 12))
        np.testing.assert_array_equal(f["activations/a"][:], a)
        np.testing.assert_array_equal(f["activations/b"][:], b)
        np.testing.assert_array_equal(f["index"][:], np.arange(n))
        np.testing.assert_array_equal(f["positive"][:], np.arange(n) % 2 == 0)
