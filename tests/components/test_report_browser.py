"""report.html in a real browser (issue 11, Tests): headless Chromium renders the self-contained file offline,
and its screenshot shows the figures: the page has many pixels of matplotlib's default line colours, a
control rendering of the same HTML whose data URIs are corrupted (broken images) has almost none.

Skipped with a reason where no Chromium is installed (CI installs Debian's ``chromium``).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from topoverify.reports import Report

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no headless browser: install Debian's `chromium` "
                                "(apt-get install chromium) to render report.html in this test")

# matplotlib's default cycle: C0 blue, C1 orange, C2 green (the monitor figure's bound, estimates, certified)
COLOURS = {"C0": (0x1F, 0x77, 0xB4), "C1": (0xFF, 0x7F, 0x0E), "C2": (0x2C, 0xA0, 0x2C)}


def _monitor_data() -> dict:
    history = []
    for t in range(40):
        for name, scale in (("fc1", 1.0), ("fc2", 0.4)):
            bound = scale * (0.3 + 0.01 * t + (2.0 if 20 <= t <= 22 else 0.0))
            ev = bound >= 0.5 or t % 10 == 0
            history.append({"step": t, "layer": name, "lr": 0.05, "lrK_bound": bound,
                            "lrK_estimate": 0.5 * bound if ev else None, "lrK_certified": 0.9 * bound if ev else None,
                            "evaluated": ev, "phase": "breakdown-possible" if ev and bound >= 2 else "preserving",
                            "covered": True, "reason": ""})
    topology = [{"step": t, "layer": n, "betti": [1, 1 if t < 25 or n == "fc2" else 0], "betti_low": None,
                 "betti_high": None, "distinct": 32, "max_log_persistence": [1.0]}
                for t in (0, 10, 20, 30, 39) for n in ("fc1", "fc2")]
    return {"optimizer": "SGD", "layers": ["fc1", "fc2"], "steps": 40, "threshold": 0.5, "history": history,
            "topology": topology, "coverage": {"steps": 40, "bounded_steps": 40, "evaluated_steps": 9,
                                               "per_layer": {}}, "warnings": []}


def _screenshot(html_path, png_path, profile) -> np.ndarray:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={profile}", "--window-size=1200,2400", f"--screenshot={png_path}",
           html_path.resolve().as_uri()]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("chromium did not finish the screenshot within 90 s")
    assert png_path.is_file(), f"chromium wrote no screenshot (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
    return np.asarray(Image.open(png_path).convert("RGB"), dtype=np.int16)


def _count(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> int:
    return int(np.all(np.abs(img - np.asarray(rgb, dtype=np.int16)) <= tol, axis=-1).sum())


def test_the_browser_shows_the_figures(tmp_path):
    rep = Report("Monitor report in a browser", description="rendered offline by headless Chromium")
    rep.add_finding("layer fc1 reached lr*K >= 1 at steps 20-22")
    rep.add_monitor(_monitor_data(), title="training run")
    files = rep.write(tmp_path / "report")
    assert files.figures and not rep.errors
    html = files.html.read_text()
    control = tmp_path / "report" / "control.html"
    corrupted, n = re.subn(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,AAAABBBBCCCC", html)
    assert n == len(files.figures)
    control.write_text(corrupted)

    real = _screenshot(files.html, tmp_path / "real.png", tmp_path / "profile-real")
    broken = _screenshot(control, tmp_path / "control.png", tmp_path / "profile-control")
    assert real.shape == broken.shape
    for name, rgb in COLOURS.items():
        shown, missing = _count(real, rgb), _count(broken, rgb)
        assert shown >= 150 and shown > 20 * max(missing, 1), (name, shown, missing)
    # the page around the figures renders in both (text, tables): the control is not simply blank
    assert (broken < 100).all(axis=-1).sum() > 1000
