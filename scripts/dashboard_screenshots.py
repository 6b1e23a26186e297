"""Look at a run's TensorBoard as a user does: serve the logs, read what the HParams dashboard shows, take screenshots.

Starts ``tensorboard --logdir LOGDIR`` on a free local port, prints the HParams table's columns and rows as the
dashboard gets them (its HTTP API), and with ``--out`` saves headless-Chromium screenshots of the HParams, Custom
Scalars, Scalars and Images dashboards there. Nothing is written without ``--out``.

    python scripts/dashboard_screenshots.py --logdir lightning_logs                     # print what HParams shows
    python scripts/dashboard_screenshots.py --logdir lightning_logs --out docs/dashboard  # and take screenshots

Chromium: ``apt-get install chromium`` (Debian), or pass ``--chromium PATH``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

DASHBOARDS = {"hparams": "hparams", "custom_scalars": "custom_scalars", "scalars": "scalars", "images": "images"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def tensorboard(logdir: Path, timeout: float = 90.0):
    """A TensorBoard server over ``logdir``; yields its base URL and stops it at the end."""
    port = free_port()
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port)]
    cmd += ["--host", "127.0.0.1", "--reload_interval", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"tensorboard stopped: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
            try:
                if urllib.request.urlopen(f"{url}/data/runs", timeout=2).status == 200 and _runs(url):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"tensorboard did not serve {logdir} within {timeout:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _runs(url: str) -> list[str]:
    return json.loads(urllib.request.urlopen(f"{url}/data/runs", timeout=5).read())


def hparams_table(url: str) -> dict:
    """What the HParams dashboard shows: ``{"hparams": [...], "metrics": [...], "sessions": [{name, hparams,
    metrics}]}`` from its HTTP API."""

    def post(path: str, body: dict) -> dict:
        request = urllib.request.Request(
            f"{url}/data/plugin/hparams/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "X-TensorBoard-Feature-Flags": "{}"},
        )
        return json.loads(urllib.request.urlopen(request, timeout=30).read())

    experiment = post("experiment", {"experimentName": ""})
    hparams = [h["name"] for h in experiment.get("hparamInfos", [])]
    metrics = [m["name"]["tag"] for m in experiment.get("metricInfos", [])]
    groups = post(
        "session_groups",
        {
            "experimentName": "",
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
            "colParams": [{"hparam": h, "includeInResult": True} for h in hparams]
            + [{"metric": {"tag": m, "group": ""}, "includeInResult": True} for m in metrics],
            "startIndex": 0,
            "sliceSize": 1000,
        },
    )
    sessions = []
    for group in groups.get("sessionGroups", []):
        values = {k: next(iter(v.values())) if isinstance(v, dict) else v for k, v in group.get("hparams", {}).items()}
        scores = {m["name"]["tag"]: m.get("value") for m in group.get("metricValues", [])}
        sessions.append({"name": group.get("name"), "hparams": values, "metrics": scores})
    return {"hparams": hparams, "metrics": metrics, "sessions": sessions}


def screenshot(chromium: str, url: str, path: Path, width: int = 1600, height: int = 1000) -> None:
    """One headless-Chromium screenshot of ``url`` (after it has rendered)."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        cmd += [f"--user-data-dir={profile}", f"--window-size={width},{height}", "--virtual-time-budget=20000"]
        cmd += [f"--screenshot={path}", url]
        subprocess.run(cmd, check=True, capture_output=True, timeout=180)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logdir", default="lightning_logs", help="the TensorBoard folder of a finished run")
    p.add_argument("--out", default=None, help="save the screenshots (PNG) in this folder; default: none")
    p.add_argument("--chromium", default=None, help="the Chromium binary (default: chromium on PATH)")
    args = p.parse_args(argv)
    logdir = Path(args.logdir)
    if not logdir.is_dir():
        print(f"dashboard_screenshots: error: {logdir} is not a folder", file=sys.stderr)
        return 2
    chromium = None
    if args.out is not None:
        chromium = args.chromium or shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            print("dashboard_screenshots: error: chromium not found (apt-get install chromium)", file=sys.stderr)
            return 2
    with tensorboard(logdir) as url:
        print(f"TensorBoard at {url}: runs {', '.join(sorted(_runs(url)))}")
        table = hparams_table(url)
        print(f"HParams: {len(table['sessions'])} sessions; columns {', '.join(table['hparams'])}")
        print(f"HParams metrics: {', '.join(table['metrics'])}")
        for s in table["sessions"]:
            shown = {k: s["hparams"][k] for k in ("task", "method", "n_selected") if k in s["hparams"]}
            print(f"  {s['name']}: {shown} {json.dumps(s['metrics'])}")
        if chromium is not None:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            for name, route in DASHBOARDS.items():
                path = out / f"tensorboard_{name}.png"
                screenshot(chromium, f"{url}/#{route}", path)
                print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
