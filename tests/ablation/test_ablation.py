"""Ablation: masked metrics against direct computations with the test's own hooks, planted units, DDP, TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from helpers import CPU, make_texts, write_jsonl

from localizer import extract
from localizer.ablation.ablate import run_ablation
from localizer.ablation.summary import control_statistics
from localizer.files.selection_file import read_selection_file
from localizer.selection import SelectionOptions
from localizer.selection.select import select_file


@pytest.fixture(scope="module")
def gpt2_selection(gpt2_dir, text_file, tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt2sel")
    acts = extract(gpt2_dir, text_file, d / "acts.h5", layers="transformer.h.*", trainer=CPU)
    select_file(acts, d / "sel.h5", SelectionOptions(count=6, controls=4, seed=1), log_dir=None)
    return d / "sel.h5"


def next_token_reference(
    model_dir, texts, zero: dict[int, np.ndarray] | None = None, fill: dict[int, np.ndarray] | None = None
):
    """Micro-averaged next-token accuracy and cross-entropy, one unpadded text at a time, with the test's own hooks
    replacing hidden dims of block outputs (zero, or ``fill`` values)."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    handles = []
    for block, dims in (zero or {}).items():

        def hook(module, args, output, dims=dims, block=block):
            h = output[0].clone() if isinstance(output, tuple) else output.clone()
            h[..., dims] = 0.0 if fill is None else torch.tensor(fill[block][dims], dtype=h.dtype)
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

        handles.append(model.transformer.h[block].register_forward_hook(hook))
    correct = total = 0
    nll = 0.0
    with torch.no_grad():
        for t in texts:
            ids = tok(t, return_tensors="pt")["input_ids"]
            logits = model(ids).logits[0, :-1]
            target = ids[0, 1:]
            correct += int((logits.argmax(-1) == target).sum())
            total += len(target)
            nll += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
    for h in handles:
        h.remove()
    return correct / total, nll / total


def test_next_token_baseline_and_localized_match_direct_computation(gpt2_dir, gpt2_selection, tmp_path):
    texts = [r["text"] for r in make_texts(23, seed=8)]
    data = write_jsonl(tmp_path / "task.jsonl", [{"text": t} for t in texts])
    doc = run_ablation(
        gpt2_selection,
        "next-token",
        model=gpt2_dir,
        task_data=data,
        batch_size=5,
        out=tmp_path / "res.json",
        log_dir=None,
        trainer=CPU,
    )
    acc, ce = next_token_reference(gpt2_dir, texts)
    assert doc["baseline"]["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert doc["baseline"]["cross_entropy"] == pytest.approx(ce, rel=1e-5)
    sel = read_selection_file(gpt2_selection)
    zero = {i: np.flatnonzero(sel["mask"][f"transformer.h.{i}"]) for i in range(2)}
    acc_l, ce_l = next_token_reference(gpt2_dir, texts, {i: d for i, d in zero.items() if len(d)})
    assert doc["localized"]["accuracy"] == pytest.approx(acc_l, abs=1e-12)
    assert doc["localized"]["cross_entropy"] == pytest.approx(ce_l, rel=1e-5)
    assert doc["delta"]["localized"]["cross_entropy"] == pytest.approx(ce_l - ce, abs=1e-5)
    # one control set, by hand too
    c = sel["controls"]["global"][2]
    acc_c, ce_c = next_token_reference(
        gpt2_dir, texts, {i: np.flatnonzero(c[f"transformer.h.{i}"]) for i in range(2) if c[f"transformer.h.{i}"].any()}
    )
    assert doc["controls"]["global"][2]["cross_entropy"] == pytest.approx(ce_c, rel=1e-5)
    saved = json.loads((tmp_path / "res.json").read_text())
    assert saved["n_selected"] == 6 and set(saved["z"]) == {"global", "layer_matched", "magnitude_matched"}
    assert len(saved["controls"]["magnitude_matched"]) == 4


def test_mean_ablation_uses_selection_means_and_scale_one_is_identity(gpt2_dir, gpt2_selection, tmp_path):
    texts = [r["text"] for r in make_texts(15, seed=9)]
    data = write_jsonl(tmp_path / "task.jsonl", [{"text": t} for t in texts])
    sel = read_selection_file(gpt2_selection)
    doc = run_ablation(
        gpt2_selection,
        "next-token",
        model=gpt2_dir,
        task_data=data,
        method="mean",
        batch_size=4,
        log_dir=None,
        trainer=CPU,
    )
    dims = {i: np.flatnonzero(sel["mask"][f"transformer.h.{i}"]) for i in range(2)}
    fill = {i: sel["stats"][f"transformer.h.{i}"]["mean_all"] for i in range(2)}
    acc, ce = next_token_reference(gpt2_dir, texts, {i: d for i, d in dims.items() if len(d)}, fill)
    assert doc["localized"]["cross_entropy"] == pytest.approx(ce, rel=1e-5)
    assert doc["localized"]["accuracy"] == pytest.approx(acc, abs=1e-12)
    same = run_ablation(
        gpt2_selection,
        "next-token",
        model=gpt2_dir,
        task_data=data,
        method="scale=1",
        batch_size=4,
        log_dir=None,
        trainer=CPU,
    )
    for m in same["metrics"]:
        assert same["delta"]["localized"][m] == 0.0
        assert all(d[m] == 0.0 for k in ("global", "layer_matched", "magnitude_matched") for d in same["delta"][k])


def test_minimal_pairs_match_direct_computation(gpt2_dir, gpt2_selection, tmp_path):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    rows = [{"good": r["text"], "bad": " ".join(reversed(r["text"].split())) + " the"} for r in make_texts(17, seed=3)]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    doc = run_ablation(
        gpt2_selection,
        "minimal-pairs",
        model=gpt2_dir,
        task_data=data,
        controls="global",
        batch_size=4,
        log_dir=None,
        trainer=CPU,
    )
    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    model = GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()

    def logp(text):
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0, :-1], -1)
        return float(lp.gather(1, ids[0, 1:, None]).sum())

    want = np.mean([logp(r["good"]) > logp(r["bad"]) for r in rows])
    assert doc["baseline"]["accuracy"] == pytest.approx(want, abs=1e-12)
    assert list(doc["controls"]) == ["global"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Stimuli (localize + validation, labelled) for the planted CNN, and its selection of the top 2 channels."""
    from planted_models import images

    d = tmp_path_factory.mktemp("planted")
    ims, pos = images(400, seed=0)
    ds = datasets.Dataset.from_dict(
        {
            "image": ims,
            "positive": pos,
            "label": [int(p) for p in pos],
            "split": ["localize"] * 200 + ["validation"] * 200,
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "positive": datasets.Value("bool"),
                "label": datasets.Value("int64"),
                "split": datasets.Value("string"),
            }
        ),
    )
    ds.save_to_disk(str(d / "stimuli"))
    acts = extract(
        "planted_models:planted_cnn",
        d / "stimuli",
        d / "acts.h5",
        layers="features",
        transform="planted_models:to_tensor",
        batch_size=50,
        trainer=CPU,
    )
    select_file(acts, d / "sel.h5", SelectionOptions(count=2, controls=12, seed=0), log_dir=None)
    return d


def test_planted_units_are_necessary_and_controls_are_not(planted, tmp_path):
    sel = read_selection_file(planted / "sel.h5")
    assert np.flatnonzero(sel["mask"]["features"]).tolist() == [0, 1]
    doc = run_ablation(
        planted / "sel.h5",
        "classification",
        model="planted_models:planted_cnn",
        task_data=None,
        batch_size=32,
        log_dir=tmp_path / "tb",
        trainer=CPU,
        loaded=_planted_loaded(),
    )
    assert doc["baseline"]["accuracy"] > 0.95
    assert abs(doc["localized"]["accuracy"] - 0.5) < 0.1  # near chance (2 balanced classes)
    assert doc["localized"]["accuracy_class_1"] < 0.2  # the positive class is lost
    for kind in ("global", "layer_matched", "magnitude_matched"):
        deltas = [d["accuracy"] for d in doc["delta"][kind]]
        assert max(abs(x) for x in deltas) < 0.05, (kind, deltas)
        assert doc["z"][kind]["accuracy"] < -10, doc["z"]
        assert doc["p_empirical"][kind]["accuracy"] == pytest.approx(1 / 13)
    # direct computation of the localized condition: zero channels 0-1 in the test's own hook
    base, abl, ds = planted_logits_by_hand(planted)
    base, abl, y = base.argmax(1), abl.argmax(1), torch.tensor(ds["label"])
    assert doc["baseline"]["accuracy"] == pytest.approx(float((base == y).float().mean()))
    assert doc["localized"]["accuracy"] == pytest.approx(float((abl == y).float().mean()))
    assert doc["localized"]["accuracy_class_0"] == pytest.approx(float((abl == y)[y == 0].float().mean()))


def planted_logits_by_hand(planted):
    """Validation logits of the planted CNN, untouched and with channels 0-1 zeroed by the test's own hook."""
    from planted_models import planted_cnn, to_tensor

    model = planted_cnn()
    ds = datasets.load_from_disk(str(planted / "stimuli")).filter(lambda s: s == "validation", input_columns="split")
    x = torch.stack([to_tensor(im) for im in ds["image"]])

    def zero01(module, args, output):
        output = output.clone()
        output[:, :2] = 0
        return output

    with torch.no_grad():
        base = model(x)
        handle = model.features.register_forward_hook(zero01)
        ablated = model(x)
        handle.remove()
    return base, ablated, ds


def _planted_loaded():
    from localizer.recording.models import load_model

    return load_model("planted_models:planted_cnn", "image", transform="planted_models:to_tensor")


def test_agreement_matches_direct_computation(planted):
    doc = run_ablation(
        planted / "sel.h5",
        "agreement",
        batch_size=64,
        log_dir=None,
        trainer=CPU,
        loaded=_planted_loaded(),
        controls="global",
        n_controls=3,
    )
    lb, la, ds = planted_logits_by_hand(planted)
    lb, la, pos = torch.log_softmax(lb, -1), torch.log_softmax(la, -1), torch.tensor(ds["positive"])
    same = la.argmax(1) == lb.argmax(1)
    kl = (lb.exp() * (lb - la)).sum(1)
    assert doc["localized"]["agreement_positive"] == pytest.approx(float(same[pos].float().mean()))
    assert doc["localized"]["agreement_control"] == pytest.approx(float(same[~pos].float().mean()))
    assert doc["localized"]["kl_positive"] == pytest.approx(float(kl[pos].mean()), rel=1e-5)
    assert doc["localized"]["kl_control"] == pytest.approx(float(kl[~pos].mean()), rel=1e-5, abs=1e-9)
    assert doc["baseline"]["agreement_positive"] == 1.0 and doc["baseline"]["kl_control"] == 0.0


def read_events(run_dir):
    """Every scalar (tag -> {step: value}), image tag, and plugin tag (hparams, custom scalars) of one run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, images, plugins = {}, set(), {}
    for f in sorted(p for p in run_dir.iterdir() if p.name.startswith("events")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0, "images": 0, "tensors": 0}).Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
        images |= set(acc.Tags()["images"])
        for plugin in ("hparams", "custom_scalars"):
            try:
                plugins.setdefault(plugin, set()).update(acc.PluginTagToContent(plugin))
            except KeyError:  # not in this event file
                pass
    return scalars, images, plugins


def test_tensorboard_tags(planted, tmp_path):
    """The tags the README lists, read back from the event files, with the results document's values."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    doc = run_ablation(
        planted / "sel.h5",
        "classification",
        batch_size=64,
        log_dir=tmp_path / "tb",
        trainer=CPU,
        loaded=_planted_loaded(),
        n_controls=2,
        sweep="12.5,25,50",
        log_name="job",
    )
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["job"]  # runs named by job
    scalars, images, plugins = read_events(tmp_path / "tb" / "job" / "ablate" / "classification")
    kinds = ["global", "layer_matched", "magnitude_matched"]
    for m in doc["metrics"]:
        prefix = f"ablation/classification/{m}"
        assert scalars[f"{prefix}/delta/localized"] == pytest.approx(
            {0: doc["delta"]["localized"][m]} | {1: doc["delta"]["localized"][m]}
        )
        assert scalars[f"{prefix}/value/baseline"][1] == pytest.approx(doc["baseline"][m])
        for k in kinds:  # one series per kind, x = the control set
            assert scalars[f"{prefix}/delta/{k}"] == pytest.approx({i: d[m] for i, d in enumerate(doc["delta"][k])})
            assert scalars[f"{prefix}/value/{k}"] == pytest.approx({i: c[m] for i, c in enumerate(doc["controls"][k])})
        sweep = scalars[f"{prefix}/sweep/localized"]
        assert sweep == pytest.approx(
            {int(round(100 * float(p["top"]))): p["delta"]["localized"][m] for p in doc["sweep"]}
        )
        mean = np.mean([d[m] for d in doc["sweep"][2]["delta"]["layer_matched"]])
        assert scalars[f"{prefix}/sweep/layer_matched"][5000] == pytest.approx(mean)
    written = {t.split("/", 3)[3].split("/")[0] for t in scalars if t.startswith("ablation/")}
    assert written == {"delta", "value", "sweep"} and "hp_metric" not in scalars  # no placeholder metric
    assert {"ablation/classification/accuracy/deltas", "ablation/classification/accuracy/sweep"} <= images
    assert "custom_scalars__config__" in plugins["custom_scalars"]
    # HParams: the session's hyperparameters and its metrics (localized deltas and z per kind)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "tb" / "job" / "ablate" / "classification"
    hp, metric_tags = {}, set()
    for f in run_dir.iterdir():
        if f.name.startswith("events"):
            acc = EventAccumulator(str(f)).Reload()
            try:
                content = acc.PluginTagToContent("hparams")
            except KeyError:
                continue
            for raw in content.values():
                data = plugin_data_pb2.HParamsPluginData.FromString(raw)
                if data.HasField("session_start_info"):
                    hp.update({k: v for k, v in data.session_start_info.hparams.items()})
                if data.HasField("experiment"):
                    metric_tags |= {mi.name.tag for mi in data.experiment.metric_infos}
    assert hp["task"].string_value == "classification" and hp["job"].string_value == "job"
    assert hp["n_selected"].number_value == doc["n_selected"] and hp["method"].string_value == "zero"
    # every session declares the same columns (the dashboard shows one experiment's), whatever its task
    from localizer.ablation.figures import HP_METRICS

    assert metric_tags == {f"hp/{m}/{w}" for m in HP_METRICS for w in ("delta_localized", *(f"z_{k}" for k in kinds))}
    assert scalars["hp/accuracy/delta_localized"] == pytest.approx({0: doc["delta"]["localized"]["accuracy"]})
    # the planted model's controls change nothing: z is undefined (null in the JSON) and has no value
    assert all(doc["z"][k]["accuracy"] is None for k in kinds)
    assert not any("/z_" in t for t in scalars) and "hp_metric" not in scalars


def log_synthetic(folder):
    """log_ablation of a results document computed from hand-made results (controls with spread, so z exists)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from localizer.ablation.figures import log_ablation
    from localizer.ablation.module import Condition
    from localizer.ablation.summary import summarize

    results = {"baseline": {"accuracy": 0.9}, "localized": {"accuracy": 0.5}}
    conditions = [Condition("baseline", "baseline", None), Condition("localized", "localized", {})]
    values = {"global": [0.88, 0.85, 0.9], "layer_matched": [0.8, 0.86, 0.83]}
    for k, vs in values.items():
        for i, v in enumerate(vs):
            results[f"{k}_{i}"] = {"accuracy": v}
            conditions.append(Condition(f"{k}_{i}", k, {}))
    doc = summarize(results, conditions, "classification", "zero", 3)
    logger = TensorBoardLogger(str(folder), name="job", version="ablate", default_hp_metric=False)
    log_ablation(logger, doc, {"task": "classification"})
    return values, folder / "job" / "ablate"


def test_hparams_hold_z_against_each_control_kind(tmp_path):
    """z of the localized delta against each kind's sets (by hand) is an HParams metric of the run."""
    values, run_dir = log_synthetic(tmp_path)
    scalars, _, _ = read_events(run_dir)
    for k, vs in values.items():
        d = np.array(vs) - 0.9
        assert scalars[f"hp/accuracy/z_{k}"][0] == pytest.approx((-0.4 - d.mean()) / d.std(ddof=1))
        assert scalars[f"ablation/classification/accuracy/delta/{k}"] == pytest.approx(dict(enumerate(d)))


def test_readme_lists_the_tags_that_are_written(planted, tmp_path):
    """Every tag pattern of the README's TensorBoard table matches a written tag, and every written tag a pattern."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("<!-- tensorboard-tags -->")[1].split("<!-- /tensorboard-tags -->")[0]
    patterns = re.findall(r"^\| `([^`]+)`", section, flags=re.M)
    assert len(patterns) >= 8
    run_ablation(planted / "sel.h5", "classification", batch_size=64, log_dir=tmp_path / "tb", trainer=CPU,
                 loaded=_planted_loaded(), n_controls=2, sweep="12.5,25", log_name="job")  # fmt: skip
    scalars, images, _ = read_events(tmp_path / "tb" / "job" / "ablate" / "classification")
    more, _, _ = read_events(log_synthetic(tmp_path / "synthetic")[1])  # with z values
    tags = set(scalars) | images | set(more)
    regexes = [re.compile(re.sub(r"<[^>]+>", "[^/]+", p.replace(".", r"\.")) + r"\Z") for p in patterns]
    unlisted = sorted(t for t in tags if not any(r.match(t) for r in regexes))
    assert not unlisted, unlisted
    ablation_patterns = [p for p, r in zip(patterns, regexes) if p.startswith(("ablation/", "hp/"))]
    assert all(any(r.match(t) for t in tags) for p, r in zip(patterns, regexes) if p in ablation_patterns)


def test_sweep_reselects_from_stored_t(planted):
    doc = run_ablation(
        planted / "sel.h5",
        "classification",
        batch_size=64,
        log_dir=None,
        trainer=CPU,
        loaded=_planted_loaded(),
        n_controls=2,
        sweep="12.5,25",
    )
    tops = [p["top"] for p in doc["sweep"]]
    assert tops == ["12.5", "25"]
    # 12.5% of 16 channels = 2 units = the original selection: the same numbers under the same keys
    first = doc["sweep"][0]
    assert first["n_selected"] == doc["n_selected"] == 2 and doc["sweep"][1]["n_selected"] == 4
    for key in ("localized", "controls", "delta", "z", "p_empirical"):
        assert first[key] == doc[key], key  # same seed → same controls
    assert len(doc["sweep"][1]["delta"]["magnitude_matched"]) == 2
    raw, base = doc["sweep"][1]["localized"]["accuracy"], doc["baseline"]["accuracy"]
    assert doc["sweep"][1]["delta"]["localized"]["accuracy"] == pytest.approx(raw - base)


def test_control_statistics_by_hand():
    z, p = control_statistics(-0.5, [0.0, -0.02, 0.01, -0.01])
    d = np.array([0.0, -0.02, 0.01, -0.01])
    assert z == pytest.approx((-0.5 - d.mean()) / d.std(ddof=1))
    assert p == pytest.approx(1 / 5)
    z, p = control_statistics(0.01, [0.0, -0.02, 0.01, -0.01])
    assert p == pytest.approx((1 + 3) / 5)  # |0.02|, |0.01|, |-0.01| >= 0.01


def test_results_record_their_provenance_and_check_reads_a_run_folder(gpt2_dir, gpt2_selection, tmp_path, capsys):
    import hashlib
    import json

    from localizer.cli import main
    from localizer.recording.fingerprint import files_fingerprint

    task = write_jsonl(tmp_path / "task.jsonl", [{"text": r["text"]} for r in make_texts(7, seed=3)])
    out = tmp_path / "run" / "results_next-token.json"
    run_ablation(gpt2_selection, "next-token", task_data=task, out=out, log_dir=None, trainer=CPU)
    p = json.loads(out.read_text())["provenance"]
    assert p["selection_sha256"] == hashlib.sha256(open(gpt2_selection, "rb").read()).hexdigest()
    assert p["selection"] == str(gpt2_selection.resolve()) and p["task_data"] == str(Path(task).resolve())
    assert p["rows"] == 7 and p["seed"] == 1 and p["method"] == "zero" and p["model"] == str(Path(gpt2_dir).resolve())
    weights = sorted(Path(gpt2_dir).glob("*.safetensors")) + [Path(gpt2_dir) / "config.json"]
    assert p["weights"] == files_fingerprint(sorted(weights))
    import shutil

    shutil.copy(gpt2_selection, tmp_path / "run" / "selection.h5")
    assert main(["check", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert "results_next-token.json: OK (ablation results, task next-token" in printed and "selection.h5: OK" in printed
    (tmp_path / "run" / "broken.json").write_text('{"task": "next-token", "baseline": {"accuracy": "high"}')
    assert main(["check", str(tmp_path / "run")]) == 1
    assert "broken.json: not a readable JSON file" in capsys.readouterr().out
