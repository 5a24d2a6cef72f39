"""scripts/screenshots runs (issue 19: CI checks the command) and writes every page's PNG."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = [
    *("signin", "overview", "overview-dark", "entries", "entry", "entry-dark", "entry-paused"),
    *("entry-runtime", "entry-edit", "entry-new", "dead"),
]

pytestmark = [pytest.mark.slow, pytest.mark.lowest]


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_screenshots_renders_every_page_into_the_given_directory(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "screenshots"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == f"scripts/screenshots: wrote {len(IMAGES)} images to {tmp_path}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"console-{n}.png" for n in IMAGES)
    for name in IMAGES:
        path = tmp_path / f"console-{name}.png"
        width, height = png_size(path)
        assert width == 1280 and height >= 600, (name, width, height)
        assert path.stat().st_size > 20_000, f"{name}: {path.stat().st_size} bytes, nearly blank"


def test_the_committed_images_are_the_ones_docs_console_md_shows() -> None:
    text = (REPO / "docs" / "console.md").read_text()
    shown = {
        line.split("(images/")[1].split(")")[0] for line in text.splitlines() if "(images/" in line
    }
    assert shown == {f"console-{n}.png" for n in IMAGES}
    for name in shown:
        png_size(REPO / "docs" / "images" / name)
