"""The wheel holds every resource: built from the tracked files, installed (not editable) into a fresh virtual
environment, and run from there — `localizer run --print_config`, `--config faces --print_config`, the built-in
stimuli, and a tiny extraction."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import h5py
import pytest
import yaml
from helpers import CPU_FLAGS

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def run(*args, cwd, env=None) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert r.returncode == 0, f"{args}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the fresh environment's python, its bin folder): localizer's wheel installed with --no-deps; the
    dependencies are borrowed from this environment through a .pth file (no network needed)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    tracked = run("git", "ls-files", "-z", cwd=ROOT).stdout.split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", tmp / "dist", source, cwd=tmp)
    wheel = next((tmp / "dist").glob("localizer-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for resource in ("language.jsonl", "minimal_pairs.jsonl", "next_token.txt", "configs/language.yaml",
                     "configs/faces.yaml"):  # fmt: skip
        assert f"localizer/resources/{resource}" in names, resource
    env_dir = tmp / "env"
    run(sys.executable, "-m", "venv", "--without-pip", env_dir, cwd=tmp)
    python = env_dir / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp).stdout.strip())
    (site / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel, cwd=tmp)
    where = run(python, "-c", "import localizer; print(localizer.__file__)", cwd=tmp).stdout.strip()
    assert where.startswith(str(site)), where  # the installed wheel, not this checkout
    return python, env_dir / "bin"


def test_the_installed_wheel_has_its_configs_and_stimuli(installed, tmp_path):
    python, bin_dir = installed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    language = yaml.safe_load(run(bin_dir / "localizer", "run", "--print_config", cwd=tmp_path, env=env).stdout)
    assert language["model"] == "gemma-3-270m" and language["ablate"]["tasks"][1]["task"] == "minimal-pairs"
    faces = yaml.safe_load(
        run(bin_dir / "localizer", "run", "--config", "faces", "--print_config", cwd=tmp_path, env=env).stdout
    )
    assert faces["model"] == "efficientnet-lite0" and faces["stimuli"] == "faces"
    code = (
        "import json; from localizer.recording.builtin import builtin\n"
        "print(json.dumps({n: len(builtin(n)) for n in ('language', 'language-next-token', 'language-minimal-pairs')}))"
    )
    sizes = json.loads(run(python, "-c", code, cwd=tmp_path, env=env).stdout.strip().splitlines()[-1])
    assert sizes == {"language": 494, "language-next-token": 50, "language-minimal-pairs": 113}


def test_the_installed_wheel_extracts(installed, gpt2_dir, text_file, tmp_path):
    _, bin_dir = installed
    out = tmp_path / "a.h5"
    run(bin_dir / "localizer", "extract", "--model", gpt2_dir, "--stimuli", text_file, "--out", out, "--layers",
        "transformer.h.*", *CPU_FLAGS, cwd=tmp_path)  # fmt: skip
    with h5py.File(out, "r") as f:
        assert f["activations/transformer.h.1"].shape == (37, 32) and f.attrs["format_version"] == 1
