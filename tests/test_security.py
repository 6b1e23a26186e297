"""No remote code unless asked, no unsafe deserialization, inputs only read."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

from helpers import make_texts, write_jsonl

from localizer.cli import main

PACKAGE = Path(__file__).resolve().parent.parent / "localizer"


def test_model_code_never_runs_without_trust_remote_code(tmp_path, capsys):
    model = tmp_path / "evil"
    model.mkdir()
    marker = tmp_path / "code-ran"
    (model / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil-localizer-test",
                "architectures": ["EvilModel"],
                "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"},
            }
        )
    )
    (model / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    stimuli = write_jsonl(tmp_path / "s.jsonl", make_texts(4))
    code = main(["extract", "--model", str(model), "--stimuli", stimuli, "--out", str(tmp_path / "a.h5")])
    err = capsys.readouterr().err
    assert code == 2 and "localizer extract: error:" in err
    assert not marker.exists()  # the repository's code was never imported
    # asked for, it runs (and its failure is still one line, exit 2)
    code = main(
        ["extract", "--model", str(model), "--stimuli", stimuli, "--out", str(tmp_path / "a.h5"), "--trust_remote_code"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "has no attribute 'EvilConfig'" in err and marker.exists()


def _calls(name: str):
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == name:
                yield path.name, {k.arg: ast.unparse(k.value) for k in node.keywords}


def test_no_unsafe_deserialization_in_the_package():
    loads = list(_calls("torch.load"))
    assert loads and all(kw.get("weights_only") == "True" for _, kw in loads), loads
    assert all(kw.get("allow_pickle") in (None, "False") for _, kw in _calls("np.load"))
    for path in PACKAGE.rglob("*.py"):
        imported = {
            a.name
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, (ast.Import, ast.ImportFrom))
            for a in n.names
        } | {n.module for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)}
        assert not imported & {"pickle", "dill", "cloudpickle", "joblib"}, path


def _digest(paths):
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p).encode())
        h.update(p.read_bytes())
        h.update(str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()


def test_inputs_are_only_read(gpt2_dir, tmp_path):
    stimuli = Path(write_jsonl(tmp_path / "s.jsonl", make_texts(10)))
    inputs = [p for p in Path(gpt2_dir).rglob("*") if p.is_file()] + [stimuli]
    before = _digest(inputs)
    names_before = sorted(p.name for p in Path(gpt2_dir).iterdir())
    assert (
        main(
            [
                "extract",
                "--model",
                gpt2_dir,
                "--stimuli",
                str(stimuli),
                "--out",
                str(tmp_path / "o" / "a.h5"),
                "--trainer.accelerator",
                "cpu",
                "--trainer.enable_progress_bar",
                "false",
            ]
        )
        == 0
    )
    assert _digest(inputs) == before
    assert sorted(p.name for p in Path(gpt2_dir).iterdir()) == names_before
