"""A counterexample as a picture: the sequence chart and the HTML report, in a real browser."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gmemlab.checker import Options, check, load
from gmemlab.checker.chart import sequence_chart
from gmemlab.checker.report import replay_counterexample

from .sysdeps import ensure

SVG = "{http://www.w3.org/2000/svg}"


def _texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


def test_the_chart_has_a_lifeline_per_actor_and_marks_the_broken_promise() -> None:
    sc = load("seed_default").with_design("seed-as-written")
    verdict = check(sc, options=Options())
    cex = verdict.counterexamples[0]
    rp = replay_counterexample(sc, cex, active=verdict.promises)
    svg = sequence_chart(sc, verdict, cex, rp)
    texts = _texts(svg)  # well-formed XML, or this raises
    for actor in ("vmm", "vmm2", "guest", "kvm"):
        assert actor in texts
    assert f"{cex.promise} violated" in texts
    root = ET.fromstring(svg)
    rows = [g for g in root.iter(f"{SVG}g") if g.get("class") == "row"]
    assert len(rows) == len(rp.steps) == len(cex.trace)
    broken = [r for r in root.iter(f"{SVG}rect") if "broken" in (r.get("class") or "")]
    assert len(broken) == 1  # only the last step breaks it
    # The notifier calls of the trace are arrows to the notifiers' lifeline.
    calls = sum(1 for st in rp.steps for ev in st.events if ev.kind == "notify")
    assert calls and sum(1 for t in texts if ".mmap_" in t and "->" in t) >= calls


def test_the_html_report_renders_in_a_browser(tmp_path: Path) -> None:
    chromium, why = ensure("chromium", "chromium")
    if chromium is None:
        pytest.skip(why)
    report = tmp_path / "r.html"
    proc = subprocess.run([sys.executable, "-m", "gmemlab", "check", "seed_default", "--design",
                           "seed-as-written", "--html", str(report), "--case-out",
                           str(tmp_path / "cex.toml")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a violation
    assert (tmp_path / "cex.svg").is_file() and f"report: {report}" in proc.stdout
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1400,1200"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", report.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    assert "P5 violated" in dom and "<svg" in dom and 'class="row"' in dom
    assert "actor_step" in dom  # the replayable case file
    shot = tmp_path / "r.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", report.as_uri()], capture_output=True,
                   timeout=120)
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50  # text, boxes and lines: not a blank page
    # The chart's red box for the broken promise is on the screen.
    assert any(r > 180 and g < 80 and b < 80 for _, (r, g, b) in colours)
