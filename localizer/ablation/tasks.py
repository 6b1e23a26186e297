"""Ablation tasks: task data, collation, the quantity each condition produces, and summed metric states.

Every task keeps its metrics as float64 *sums* (:class:`SumStates`, ``dist_reduce_fx="sum"``), synced once at the end
of validation, so each sample counts exactly once across DDP ranks however many batches each rank ran.

=================  ===========================================  ============================================
task               task data                                    metrics
=================  ===========================================  ============================================
``classification`` ``text`` or ``image`` + int ``label``        ``accuracy``, ``accuracy_class_<label>``
``next-token``     ``text`` (causal LM)                         ``accuracy``, ``cross_entropy`` (nats), both
                                                                micro-averaged over predicted tokens
``minimal-pairs``  ``good``, ``bad`` texts (causal LM)          ``accuracy`` of log p(good) > log p(bad)
``agreement``      ``text`` or ``image`` + bool ``positive``    ``agreement_positive``/``_control``,
                                                                ``kl_positive``/``_control`` vs baseline
=================  ===========================================  ============================================
"""

from __future__ import annotations

import abc
import os
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from localizer.errors import LocalizerError
from localizer.recording.datamodule import Collate
from localizer.recording.hooks import main_tensor

TASKS = ("classification", "next-token", "minimal-pairs", "agreement")


class SumStates(Metric):
    """Named float64 sums, reduced by summation across ranks at compute time.

    Args:
        sizes: ``{name: number of entries}``.
    """

    full_state_update = False

    def __init__(self, sizes: dict[str, int], **kwargs):
        super().__init__(**kwargs)
        self.names = list(sizes)
        for name, size in sizes.items():
            self.add_state(name, default=torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, **values: torch.Tensor) -> None:
        for name, value in values.items():
            state = getattr(self, name)
            state += value.to(state.device, torch.float64).reshape(state.shape)

    def compute(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).clone() for name in self.names}


def _ratio(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a / b) if float(b) > 0 else float("nan")


class Task(abc.ABC):
    """A task: ``collate`` rows → batch; ``output`` (one forward of a condition) → what ``update`` needs."""

    name = ""
    columns: tuple[str, ...] = ()

    @abc.abstractmethod
    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Rows (dicts with ``index`` and the task's ``columns``) → a model-ready batch."""

    @abc.abstractmethod
    def sums(self) -> dict[str, int]:
        """The summed metric states: ``{name: size}``."""

    @abc.abstractmethod
    def output(self, call_model, batch: dict[str, Any]) -> Any:
        """One forward of the (possibly masked) model → what :meth:`update` needs."""

    @abc.abstractmethod
    def update(self, states: SumStates, out: Any, baseline: Any, batch: dict[str, Any]) -> None:
        """Add one batch of one condition (``baseline`` = the unmasked output of the same batch)."""

    @abc.abstractmethod
    def finalize(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        """Summed states (all ranks) → ``{metric: value}``."""


def _token_logprobs(logits: torch.Tensor, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a causal LM: per predicted position (input t predicts token t+1) the NLL ``[B, T-1]`` (float32), whether
    the top-1 prediction is right ``[B, T-1]`` and which positions count ``[B, T-1]`` (both tokens non-pad)."""
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    logits = logits[:, :-1].float()
    target = ids[:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    correct = logits.argmax(-1) == target
    return nll, correct, mask[:, 1:] & mask[:, :-1]


def _logits(out: Any, task: str) -> torch.Tensor:
    """The prediction logits of a model output; a Hugging Face output without ``logits`` (a bare encoder) is refused."""
    if isinstance(out, dict):
        if "logits" not in out:
            raise LocalizerError(
                f"task {task} needs a model with a prediction head, but {type(out).__name__} has no "
                f"logits (load a ...ForCausalLM / ...ForImageClassification class)"
            )
        out = out["logits"]
    logits = main_tensor(out)
    if task in ("next-token", "minimal-pairs") and logits.dim() != 3:
        raise LocalizerError(
            f"task {task} needs a causal language model with token logits [B, T, vocab]; the model "
            f"returned shape {tuple(logits.shape)}"
        )
    return logits


class ClassificationTask(Task):
    name, columns = "classification", ("text", "image", "label")

    def __init__(
        self, kind: str, processor=None, transform=None, labels: list[int] | None = None, max_length: int | None = None
    ):
        self.collator = Collate(kind, processor, transform, max_length)
        self.labels = list(labels or [])

    def collate(self, rows):
        return self.collator(rows)

    def sums(self):
        return {"correct": 1, "total": 1, "class_correct": len(self.labels), "class_total": len(self.labels)}

    def output(self, call_model, batch):
        logits = _logits(call_model(batch), self.name)
        if logits.dim() != 2:
            raise LocalizerError(
                f"task classification needs class logits [B, classes]; the model returned shape {tuple(logits.shape)}"
            )
        return logits.argmax(-1)

    def update(self, states, out, baseline, batch):
        label = batch["label"]
        right = (out == label).double()
        labels = torch.tensor(self.labels, device=label.device)
        onehot = (label.unsqueeze(1) == labels).double()  # [B, K]
        states.update(
            correct=right.sum(),
            total=torch.tensor(float(len(label))),
            class_correct=right @ onehot,
            class_total=onehot.sum(0),
        )

    def finalize(self, sums):
        out = {"accuracy": _ratio(sums["correct"], sums["total"])}
        for i, label in enumerate(self.labels):
            out[f"accuracy_class_{label}"] = _ratio(sums["class_correct"][i], sums["class_total"][i])
        return out


class NextTokenTask(Task):
    name, columns = "next-token", ("text",)

    def __init__(self, tokenizer, max_length: int | None = None):
        self.collator = Collate("text", tokenizer, max_length=max_length)

    def collate(self, rows):
        return self.collator(rows)

    def sums(self):
        return {"correct": 1, "total": 1, "nll": 1}

    def output(self, call_model, batch):
        nll, correct, valid = _token_logprobs(_logits(call_model(batch), self.name), batch)
        return nll, correct, valid

    def update(self, states, out, baseline, batch):
        nll, correct, valid = out
        states.update(correct=(correct & valid).sum(), total=valid.sum(), nll=(nll.double() * valid).sum())

    def finalize(self, sums):
        return {"accuracy": _ratio(sums["correct"], sums["total"]), "cross_entropy": _ratio(sums["nll"], sums["total"])}


class MinimalPairsTask(Task):
    name, columns = "minimal-pairs", ("good", "bad")

    def __init__(self, tokenizer, max_length: int | None = None):
        self.collator = Collate("text", tokenizer, max_length=max_length)

    def collate(self, rows):
        texts = [{"index": r["index"], "text": r["good"]} for r in rows] + [
            {"index": r["index"], "text": r["bad"]} for r in rows
        ]
        batch = self.collator(texts)
        batch["pairs"] = len(rows)
        return batch

    def sums(self):
        return {"correct": 1, "total": 1}

    def output(self, call_model, batch):
        nll, _, valid = _token_logprobs(_logits(call_model(batch), self.name), batch)
        return -(nll.double() * valid).sum(1)  # log p(sentence) summed over predicted tokens, [2 x pairs]

    def update(self, states, out, baseline, batch):
        n = batch["pairs"]
        states.update(correct=(out[:n] > out[n:]).sum(), total=torch.tensor(float(n)))

    def finalize(self, sums):
        return {"accuracy": _ratio(sums["correct"], sums["total"])}


class AgreementTask(Task):
    name, columns = "agreement", ("text", "image", "positive")

    def __init__(self, kind: str, processor=None, transform=None, max_length: int | None = None):
        self.collator = Collate(kind, processor, transform, max_length)

    def collate(self, rows):
        return self.collator(rows)

    def sums(self):
        return {"same": 2, "count": 2, "kl": 2}  # index 0 = control, 1 = positive

    def output(self, call_model, batch):
        logits = _logits(call_model(batch), self.name).float()
        if logits.dim() == 3:  # a language model: the next-token distribution after the last real token
            mask = batch["attention_mask"]
            positions = torch.arange(mask.shape[1], device=mask.device)
            last = (mask.long() * (positions + 1)).argmax(1)
            logits = logits[torch.arange(len(logits), device=logits.device), last]
        return torch.log_softmax(logits, -1)

    def update(self, states, out, baseline, batch):
        cls = batch["positive"].long()
        onehot = F.one_hot(cls, 2).double()  # [B, 2]
        same = (out.argmax(-1) == baseline.argmax(-1)).double()
        kl = (baseline.exp() * (baseline - out)).sum(-1).double()
        states.update(same=same @ onehot, count=onehot.sum(0), kl=kl @ onehot)

    def finalize(self, sums):
        return {
            "agreement_positive": _ratio(sums["same"][1], sums["count"][1]),
            "agreement_control": _ratio(sums["same"][0], sums["count"][0]),
            "kl_positive": _ratio(sums["kl"][1], sums["count"][1]),
            "kl_control": _ratio(sums["kl"][0], sums["count"][0]),
        }


def validate_task_data(ds, task: str, name: str = "task data"):
    """Check the columns a task needs (see the module docstring); return the dataset."""
    cols = set(ds.column_names)
    if len(ds) == 0:
        raise LocalizerError(f"{name}: no rows")
    if task == "minimal-pairs":
        missing = {"good", "bad"} - cols
        if missing:
            raise LocalizerError(
                f"{name}: minimal-pairs needs 'good' and 'bad' text columns (missing {sorted(missing)})"
            )
        for i, (g, b) in enumerate(zip(ds["good"], ds["bad"])):
            if not (isinstance(g, str) and g.strip() and isinstance(b, str) and b.strip()):
                raise LocalizerError(f"{name}: minimal pair {i} has an empty or non-string text")
        return ds
    kinds = [c for c in ("text", "image") if c in cols]
    if len(kinds) != 1:
        raise LocalizerError(
            f"{name}: task {task} needs exactly one of the columns 'text' or 'image' (found {sorted(cols)})"
        )
    if task == "next-token" and kinds[0] != "text":
        raise LocalizerError(f"{name}: task next-token needs a 'text' column")
    if kinds[0] == "text":
        for i, t in enumerate(ds["text"][:]):
            if not isinstance(t, str) or not t.strip():
                raise LocalizerError(f"{name}: row {i} has an empty or non-string text")
    if task == "classification":
        if "label" not in cols:
            raise LocalizerError(f"{name}: task classification needs an integer 'label' column")
        if (
            getattr(ds.features["label"], "dtype", "") not in ("int8", "int16", "int32", "int64")
            and type(ds.features["label"]).__name__ != "ClassLabel"
        ):
            raise LocalizerError(f"{name}: column 'label' must hold integers, got {ds.features['label']}")
    if task == "agreement":
        if "positive" not in cols or getattr(ds.features["positive"], "dtype", "") != "bool":
            raise LocalizerError(f"{name}: task agreement needs a bool 'positive' column")
    return ds


def load_task_data(source, task: str):
    """Task data from a built-in name, a file, a directory, a hub id or a ``datasets.Dataset``, validated for
    ``task``."""
    import datasets

    from localizer.recording.stimuli import _read_source

    data = source if isinstance(source, (datasets.Dataset, datasets.DatasetDict)) else _read_source(source, "train")
    if isinstance(data, datasets.DatasetDict):
        data = datasets.concatenate_datasets(list(data.values()))
    return validate_task_data(data, task, name=str(source) if isinstance(source, (str, os.PathLike)) else "task data")


def make_task(task: str, data, processor=None, transform=None, max_length: int | None = None) -> Task:
    """The :class:`Task` for ``task`` on validated task data."""
    if task not in TASKS:
        raise LocalizerError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    kind = "text" if "text" in data.column_names or task == "minimal-pairs" else "image"
    if kind == "text" and processor is None:
        raise LocalizerError(f"task {task} on texts needs the model's tokenizer")
    if task == "classification":
        return ClassificationTask(kind, processor, transform, sorted(set(data["label"])), max_length)
    if task == "next-token":
        return NextTokenTask(processor, max_length)
    if task == "minimal-pairs":
        return MinimalPairsTask(processor, max_length)
    return AgreementTask(kind, processor, transform, max_length)
