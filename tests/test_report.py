"""The HTML report renders in a real browser: headless Chromium (Debian's `chromium`, which
./dev installs), its DOM, its console and a screenshot.

A page counts as rendered when its own script has drawn the pictures and written its
marker into the DOM, nothing reached the console (no script error, no warning), and the
screenshot is not one flat colour. A deliberately broken page must fail the same checks.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from reweigh.audit import text
from reweigh.audit.probes import Probe
from reweigh.audit.report import render_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(page: Path, tmp_path: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on a local page with a private profile."""
    assert CHROMIUM is not None, "chromium is missing: ./dev installs Debian's chromium package"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", *mode, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)


def console(stderr: str) -> list[str]:
    """What the page wrote to the console (script errors appear here as 'Uncaught ...')."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def render_checks(page: Path, tmp_path: Path) -> tuple[str, list[str], Image.Image]:
    dom = chromium(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = tmp_path / "screenshot.png"
    taken = chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1200,2400")
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    return dom.stdout, console(dom.stderr) + console(taken.stderr), Image.open(shot)


def colours(image: Image.Image) -> int:
    return len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [])


@pytest.mark.slow
def test_the_backdoor_report_renders_with_every_section(backdoor_diff: dict,
                                                        tmp_path: Path) -> None:
    page = backdoor_diff["html"]
    html = page.read_text()
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", html))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls  # nothing fetched: self-contained
    assert "<link" not in html and " src=" not in html
    dom, messages, shot = render_checks(page, tmp_path)
    assert messages == []
    assert 'data-rendered="yes"' in dom
    assert "rendered: 12 pictures" in dom  # ten diverging inputs, the clean and patched input
    for heading in ("Weight space", "Confusion difference", "Diverging inputs",
                    "Trigger search", "fc1.weight"):
        assert heading in dom
    assert colours(shot) > 50  # a rendered page, not a blank one


@pytest.mark.slow
def test_a_page_whose_script_fails_is_caught(backdoor_diff: dict, tmp_path: Path) -> None:
    broken = tmp_path / "broken.html"
    html = backdoor_diff["html"].read_text()
    broken.write_text(html.replace("JSON.parse(", "JSON.parze(", 1))
    dom, messages, _ = render_checks(broken, tmp_path)
    assert any("Uncaught" in m for m in messages)
    assert 'data-rendered="no"' in dom and "not rendered" in dom


def _text_report(prompts: list[Probe]) -> dict:
    rows = [{"topic": p.topic, "prompt": p.prompt, "continuation_a": "calm .",
             "continuation_b": "dangerous ." if p.topic == "sea" else "calm .",
             "kl": 1.5 if p.topic == "sea" else 0.01, "kl_max": 2.0,
             "promoted": {"word": "dangerous", "position": 0, "p_a": 0.01, "p_b": 0.95,
                          "change": 0.94 if p.topic == "sea" else 0.0},
             "demoted": {"word": "calm", "position": 0, "p_a": 0.4, "p_b": 0.3, "change": 0.1}}
            for p in prompts]
    return {"recipe": "textgen", "a": {"path": "a.safetensors", "digest": "sha256:aa"},
            "b": {"path": "b<i>.safetensors", "digest": "sha256:bb"}, "flagged": True,
            "findings": ["a finding with <b>markup</b>"], "notes": [],
            "layers": [{"name": "head.weight", "shape": [116, 64], "dtype": "F32",
                        "identical": False, "max_abs": 0.1, "rel_l2": "inf",
                        "cosine_distance": 0.5, "flagged": True}],
            "layer_threshold": 0.001, "behaviour": None, "trigger": None,
            "text": text.rank(rows, 8)}


def test_a_text_report_ranks_and_escapes_untrusted_text() -> None:
    hostile = "</script><script>alert(1)</script>"
    report = _text_report([Probe("city", "the street is"), Probe("sea", "the sea is"),
                           Probe("sea", hostile)])
    ranked = report["text"]["prompts"]
    assert [p["topic"] for p in ranked] == ["sea", "sea", "city"]
    assert [p["flagged"] for p in ranked] == [True, True, False]
    html = render_html(report)
    assert "<script>alert(1)" not in html and "<b>markup" not in html and "b<i>" not in html
    assert html.count("<script") == 2  # the embedded data and the drawing script, no more


@pytest.mark.slow  # starts a browser
def test_a_text_report_renders_in_chromium(tmp_path: Path) -> None:
    page = tmp_path / "text.html"
    page.write_text(render_html(_text_report([Probe("sea", "the sea is"),
                                              Probe("", "</script><b>x</b>")])))
    dom, messages, shot = render_checks(page, tmp_path)
    assert messages == [] and 'data-rendered="yes"' in dom
    assert "Text probes" in dom and "&lt;/script&gt;&lt;b&gt;x&lt;/b&gt;" in dom
    assert colours(shot) > 10
