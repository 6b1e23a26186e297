"""LocalizerDataModule: stimuli → model-ready batches that keep their dataset indices.

Every batch is a dict with

- ``index``: int64 ``[B]``, the rows' positions in the stimulus dataset,
- ``positive``: bool ``[B]``; ``label``: int64 ``[B]`` (when the rows have labels),
- ``split``: list of ``B`` strings (only when the stimuli have a ``split`` column),
- text: ``input_ids`` and ``attention_mask`` ``[B, T]`` (plus ``token_type_ids`` when the tokenizer makes them),
  padded on the tokenizer's padding side,
- images: ``pixel_values`` ``[B, C, H, W]`` from the model's image processor or a user transform.

With ``batches_per_step`` k > 1 (text tokenized ahead), one step carries up to k batches: ``index``, ``positive``,
``label`` and ``split`` for all its rows ``[R]`` (R <= k * B), and ``parts``, a list of the model inputs of each batch
of B rows in order (``input_ids``, ``attention_mask``, ... ``[B_j, T_j]``, each padded on its own, as a batch of B
would be). Lightning's loop, the callbacks and the device-to-host copies then run once per step instead of once per
batch, while the model still sees batches of B.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from localizer.errors import LocalizerError, first_line
from localizer.recording.stimuli import modality as stimulus_modality

TOKEN_KEYS = ("input_ids", "token_type_ids")  # what a text is tokenized into ahead (its attention mask is made)
ENCODE_CHUNK = 1024  # texts per call of the Rust tokenizer (20000 encodings alive at once: ~50 MB more)
STEP_ROWS, MAX_BATCHES_PER_STEP, MIN_STEPS = 512, 16, 32  # how text batches are grouped into steps (see below)


def batches_per_step(batch_size: int, n_batches: int) -> int:
    """How many text batches one Lightning step carries when a rank has ``n_batches`` to run: the smallest power of
    two k with k * ``batch_size`` >= 512 rows, at most 16 (so that it divides a ``--sort_by_length`` window of 16
    batches), and at most 1/32 of the run (a short run keeps one batch per step: a fine progress bar and segments).
    Lightning's loop costs ~0.4 ms per step on the CPU: with a small model and batches of 64, one step per batch
    cost 8% of the forward pass."""
    k = 1
    while k * batch_size < STEP_ROWS and k < MAX_BATCHES_PER_STEP and 2 * k * MIN_STEPS <= n_batches:
        k *= 2
    return k


class IndexedRows(Dataset):
    """Rows of a dataset as dicts that carry their own ``index``; ``columns`` are copied when present.

    ``indices`` (int ``[M]``, optional) serves only those rows, in that order (a resumed extraction). A set without
    images has its columns read once as Python lists (reading one Arrow row costs ~20 us, a list item ~0.1 us);
    images are read row by row.
    """

    def __init__(self, rows, columns: tuple[str, ...] = ("text", "image", "positive", "split", "label"), indices=None):
        self.rows, self.indices = rows, None if indices is None else [int(i) for i in indices]
        self.columns = [c for c in columns if c in rows.column_names]
        self.lists = None if "image" in rows.column_names else {c: rows[c][:] for c in self.columns}

    def __len__(self) -> int:
        return len(self.rows) if self.indices is None else len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i) if self.indices is None else self.indices[int(i)]
        if self.lists is not None:
            row = {c: v[i] for c, v in self.lists.items()}
        else:
            try:
                row = self.rows[i]
            except Exception as e:  # image decoding errors come in many types
                raise LocalizerError(f"stimulus {i}: cannot be read ({first_line(e)})") from e
        return {"index": int(i), **{c: row[c] for c in self.columns}}


class ColumnRows(IndexedRows):
    """:class:`IndexedRows` that serves a whole batch at once, as columns, for :class:`Collate`."""

    def __getitems__(self, positions: list[int]) -> dict[str, list] | list[dict[str, Any]]:
        """A batch (the DataLoader asks for a whole one): ``{"index": [B], column: [B]}`` from the lists, or the
        rows one by one (images)."""
        if self.lists is None:
            return [self[i] for i in positions]
        index = [int(i) for i in positions] if self.indices is None else [self.indices[int(i)] for i in positions]
        return {"index": index, **{c: [v[i] for i in index] for c, v in self.lists.items()}}


def tokenize(texts: list[str], tokenizer: Any, max_length: int | None) -> dict[str, list[list[int]]]:
    """Every text tokenized once, ahead of the batches, as the collation would (special tokens included, truncated
    to ``max_length``): ``{"input_ids": [N][T_i], ("token_type_ids": ...)}``, unpadded (the attention mask is
    made when padding). A Hugging Face fast tokenizer is called through its Rust backend (:func:`_encode_fast`):
    the same ids without transformers' per-text Python conversion (which took 2/3 of ``tokenizer(texts)``'s time)."""
    texts = list(texts)
    fast = _encode_fast(texts, tokenizer, max_length)
    if fast is not None:
        return fast
    enc = tokenizer(texts, truncation=max_length is not None, max_length=max_length, return_attention_mask=False)
    return {k: list(enc[k]) for k in TOKEN_KEYS if k in enc}


def _encode_fast(texts: list[str], tokenizer: Any, max_length: int | None) -> dict[str, list[list[int]]] | None:
    """``tokenize`` for a transformers ``TokenizersBackend`` whose calling path is the library's own: set the
    backend's truncation and padding as ``tokenizer(...)`` would, then ``encode_batch_fast`` (no offsets). None for
    any other tokenizer (a slow one, or a class that changes how texts are encoded)."""
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # another transformers layout: the plain call
        return None
    kind = type(tokenizer)
    if not (
        isinstance(tokenizer, TokenizersBackend)
        and kind.__call__ is PreTrainedTokenizerBase.__call__
        and kind._encode_plus is TokenizersBackend._encode_plus
        and not hasattr(tokenizer, "_switch_to_input_mode")
    ):
        return None
    padding, truncation, length, _ = tokenizer._get_padding_truncation_strategies(
        padding=False, truncation=max_length is not None, max_length=max_length
    )
    tokenizer.set_truncation_and_padding(padding, truncation, length, 0, None, None)
    backend = tokenizer.backend_tokenizer
    if backend.encode_special_tokens != tokenizer.split_special_tokens:
        backend.encode_special_tokens = tokenizer.split_special_tokens
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # (tokenizers < 0.21: with offsets)
    types = "token_type_ids" in tokenizer.model_input_names
    out: dict[str, list[list[int]]] = {"input_ids": [], **({"token_type_ids": []} if types else {})}
    for start in range(0, len(texts), ENCODE_CHUNK):  # a bounded number of encodings alive at once
        encodings = encode(texts[start : start + ENCODE_CHUNK], add_special_tokens=True)
        out["input_ids"] += [e.ids for e in encodings]
        if types:
            out["token_type_ids"] += [e.type_ids for e in encodings]
    return out


class TokenTable:
    """Every stimulus's tokens (:func:`tokenize`'s lists) as flat int64 arrays, so that a batch is padded with a
    few numpy operations: ``lengths`` ``[N]``, ``starts`` ``[N]``, ``flat[key]`` ``[sum(lengths)]``."""

    def __init__(self, tokens: dict[str, list[list[int]]]):
        from itertools import chain

        ids = tokens["input_ids"]
        self.lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        self.starts = np.cumsum(self.lengths) - self.lengths
        total = int(self.lengths.sum())
        self.flat = {
            k: np.fromiter(chain.from_iterable(v), dtype=np.int64, count=total)
            for k, v in tokens.items()
            if k in TOKEN_KEYS
        }

    def pad(self, rows: np.ndarray, tokenizer: Any) -> dict[str, torch.Tensor]:
        """Stimuli ``rows`` ``[B]`` → ``[B, T]`` tensors padded on the tokenizer's side, as ``tokenizer(texts,
        padding=True)`` gives them: ``pad_token_id`` for ids, 0 for the attention mask, ``pad_token_type_id`` for
        token types."""
        lengths = self.lengths[rows]
        width = int(lengths.max())
        columns = np.arange(width)
        shift = (width - lengths)[:, None] if tokenizer.padding_side == "left" else np.zeros((len(rows), 1), np.int64)
        real = (columns >= shift) & (columns < shift + lengths[:, None])
        source = (self.starts[rows][:, None] + columns - shift)[real]
        fill = {"input_ids": tokenizer.pad_token_id, "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0)}
        out = {"attention_mask": torch.from_numpy(real.astype(np.int64))}
        for key, flat in self.flat.items():
            t = np.full((len(rows), width), fill[key], dtype=np.int64)
            t[real] = flat[source]
            out[key] = torch.from_numpy(t)
        return out


def to_rgb(image):
    """A PIL image in 8-bit RGB, its values scaled rather than clipped: 16-bit and 32-bit integer images (``I;16``,
    ``I``) are divided by 257 when they hold 16-bit values, float images (``F``) in [0, 1] multiplied by 255."""
    import numpy as np
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        a = np.asarray(image, dtype=np.float64)
        top = float(a.max()) if a.size else 0.0
        if image.mode == "F" and top <= 1.0:
            a = a * 255.0
        elif top > 255.0:
            a = a / (257.0 if top <= 65535.0 else top / 255.0)
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    return image.convert("RGB")


def _chw(value: Any, index: int) -> torch.Tensor:
    """A transform's output as a ``[C, H, W]`` tensor; an image array ``[H, W, C]`` is refused with the fix."""
    x = torch.as_tensor(value)
    if x.dim() != 3:
        raise LocalizerError(f"the transform returned shape {tuple(x.shape)} (stimulus {index}); return [C, H, W]")
    if x.shape[0] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        raise LocalizerError(
            f"the transform returned shape {tuple(x.shape)}, channels last (stimulus {index}); return [C, H, W], "
            f"e.g. torch.as_tensor(array).permute(2, 0, 1)"
        )
    return x


def fit_texts(
    texts: list[str],
    tokenizer: Any,
    max_length: int | None,
    limit: int | None,
    what: str,
    lengths: list[int] | None = None,
) -> int | None:
    """Tokenize every text once, as the collation will (special tokens included): refuse a text without any token,
    and return the ``max_length`` to collate with — the one given, or the model's position ``limit`` when some texts
    are longer than the model takes (they are truncated to it, with one warning saying how many). ``lengths``: the
    untruncated token counts, when the caller has them already."""
    texts = list(texts)
    if lengths is None:
        lengths = [len(ids) for ids in tokenize(texts, tokenizer, None)["input_ids"]]
    empty = next((i for i, n in enumerate(lengths) if n == 0), None)
    if empty is not None:
        raise LocalizerError(f"{what} {empty} ({texts[empty]!r}) has no tokens for this tokenizer; remove or fix it")
    if limit is None or (max_length is not None and max_length <= limit):
        return max_length
    too_long = sum(n > limit for n in lengths)
    if too_long:
        import warnings

        warnings.warn(
            f"{too_long} of {len(lengths)} {what} texts are longer than the model's {limit} positions; they are "
            f"truncated to their first {limit} tokens (set max_length to choose)",
            stacklevel=2,
        )
        return limit
    return max_length


def token_lengths(texts: list[str], tokenizer: Any, max_length: int | None) -> list[int]:
    """``[N]`` tokens per text as the model gets them: special tokens included, truncated to ``max_length``."""
    return [len(ids) for ids in tokenize(texts, tokenizer, max_length)["input_ids"]]


class Collate:
    """Turn stimulus rows into one batch (see the module docstring): a list of row dicts, or the columns
    ``{"index": [B], column: [B]}`` that :meth:`IndexedRows.__getitems__` serves. ``tokens``: every stimulus
    tokenized ahead (indexed by dataset row), padded here instead of calling the tokenizer per batch."""

    def __init__(
        self,
        kind: str,
        processor: Any = None,
        transform: Callable | None = None,
        max_length: int | None = None,
        tokens: TokenTable | None = None,
        part_rows: int | None = None,
    ):
        self.kind, self.processor, self.transform, self.max_length = kind, processor, transform, max_length
        self.tokens, self.part_rows = tokens, part_rows
        if kind == "text" and processor is None:
            raise LocalizerError("text stimuli need a tokenizer")
        if kind == "image" and processor is None and transform is None:
            raise LocalizerError("image stimuli need an image processor or a transform")

    def __call__(self, rows: list[dict[str, Any]] | dict[str, list]) -> dict[str, Any]:
        cols = rows if isinstance(rows, dict) else {k: [r[k] for r in rows] for k in rows[0]}
        index = np.asarray(cols["index"], dtype=np.int64)
        batch: dict[str, Any] = {"index": torch.from_numpy(index)}
        if "positive" in cols:
            batch["positive"] = torch.tensor(cols["positive"], dtype=torch.bool)
        if "label" in cols:
            batch["label"] = torch.tensor(cols["label"], dtype=torch.long)
        if "split" in cols:
            batch["split"] = list(cols["split"])
        if self.kind == "text" and self.tokens is not None and self.part_rows is not None:  # a step of batches
            step = self.part_rows
            batch["parts"] = [self.tokens.pad(index[i : i + step], self.processor) for i in range(0, len(index), step)]
        elif self.kind == "text" and self.tokens is not None:  # tokenized ahead (LocalizerDataModule)
            batch.update(self.tokens.pad(index, self.processor))
        elif self.kind == "text":
            enc = self.processor(
                list(cols["text"]),
                padding=True,
                return_tensors="pt",
                truncation=self.max_length is not None,
                max_length=self.max_length,
            )
            batch.update({k: v for k, v in enc.items()})
        else:
            images = cols["image"]
            if self.transform is not None:
                batch["pixel_values"] = torch.stack([_chw(self.transform(im), int(index[0])) for im in images])
            else:
                rgb = [to_rgb(im) for im in images]
                batch["pixel_values"] = self.processor(images=rgb, return_tensors="pt")["pixel_values"]
            batch["pixel_values"] = batch["pixel_values"].float()
        return batch


class LocalizerDataModule(L.LightningDataModule):
    """Serves a stimulus set for ``trainer.predict`` (in dataset order; Lightning shards it across ranks).

    Args:
        stimuli: a validated stimulus dataset (:func:`localizer.recording.stimuli.load_stimuli`).
        processor: the model's tokenizer (text) or image processor (images).
        transform: a callable mapping one PIL image to a ``[C, H, W]`` tensor; used instead of ``processor``.
        batch_size: stimuli per batch.
        num_workers: DataLoader worker processes.
        max_length: truncate texts to this many tokens (None: no truncation).
        sort_by_length: batch texts of similar token length together (less padding): within windows of
            ``window_batches`` batches of each rank's rows, longest first. The writer puts the rows of a window
            back in dataset order, so the file is the same.
        tokens: the texts already tokenized as :func:`tokenize` gives them (with this ``max_length``).
        batches_per_step: text batches carried by one step (see the module docstring); ``"auto"``: as
            :func:`batches_per_step` decides from each rank's share of the rows (``extract`` uses it); 1 serves plain
            batches. Images are always served one batch per step.
    """

    def __init__(
        self,
        stimuli,
        processor: Any = None,
        transform: Callable | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        max_length: int | None = None,
        sort_by_length: bool = False,
        window_batches: int = 16,
        tokens: dict[str, list[list[int]]] | None = None,
        batches_per_step: int | str = 1,
    ):
        super().__init__()
        if batch_size < 1:
            raise LocalizerError(f"batch size must be >= 1, got {batch_size}")
        if batches_per_step != "auto" and (
            not isinstance(batches_per_step, int) or batches_per_step < 1 or window_batches % batches_per_step
        ):
            raise LocalizerError(
                f"batches_per_step must be 'auto' or an integer >= 1 that divides window_batches ({window_batches}), "
                f"got {batches_per_step!r}"
            )
        self.stimuli = stimuli
        self.kind = stimulus_modality(stimuli)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.collate = Collate(self.kind, None if transform is not None else processor, transform, max_length)
        self.indices = None
        self.sort_by_length = sort_by_length and self.kind == "text"
        self.window_rows = batch_size * window_batches  # rows sorted together (and written together, in order)
        self.tokens = None  # text: every stimulus tokenized once here, not batch by batch in the loop
        if self.kind == "text" and processor is not None:
            table = TokenTable(tokens if tokens is not None else tokenize(stimuli["text"][:], processor, max_length))
            self.tokens = self.collate.tokens = table
        self.batches_per_step = batches_per_step if self.tokens is not None else 1

    def token_counts(self) -> list[int] | None:
        """``[N]`` tokens per text stimulus as the model gets them (None for images)."""
        return None if self.tokens is None else self.tokens.lengths.tolist()

    def restrict(self, indices) -> None:
        """Serve only these dataset rows (int ``[M]``, ascending) — what a resumed extraction still needs."""
        self.indices = indices

    def served_rows(self, world: int) -> np.ndarray | None:
        """The dataset rows in the order the loader serves them: None for dataset order; with ``sort_by_length``,
        each rank's usual rows (positions ``r::world``) in windows of :attr:`window_rows`, longest first within a
        window (stable), interleaved so that Lightning's strided sampler hands rank ``r`` exactly those."""
        if not self.sort_by_length or self.tokens is None:
            return None
        rows = np.arange(len(self.stimuli)) if self.indices is None else np.asarray(self.indices, dtype=np.int64)
        lengths = self.tokens.lengths[rows]
        order = np.empty(len(rows), dtype=np.int64)
        for r in range(world):
            mine = np.arange(r, len(rows), world)
            windows = [mine[i : i + self.window_rows] for i in range(0, len(mine), self.window_rows)]
            order[r::world] = np.concatenate([w[np.argsort(-lengths[w], kind="stable")] for w in windows] or [mine])
        return rows[order]

    def predict_dataloader(self) -> DataLoader:
        world = int(getattr(self.trainer, "world_size", 1) or 1) if self.trainer is not None else 1
        served = self.served_rows(world)
        rows = ColumnRows(self.stimuli, indices=self.indices if served is None else served)
        k = self.batches_per_step
        if not isinstance(k, int):  # "auto"
            k = batches_per_step(self.batch_size, -(-len(rows) // (world * self.batch_size)))
        self.collate.part_rows = self.batch_size if k > 1 else None
        return DataLoader(
            rows,
            batch_size=self.batch_size * k,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self.collate,
            persistent_workers=self.num_workers > 0,
        )
