"""The HTML report as a browser draws it: headless Chromium screenshots the page and the test reads pixels.

Skipped when no Chromium is installed (``apt-get install chromium``). The PNG is decoded here with zlib and
numpy, so the test needs nothing else.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from test_report_sample import failing_report, sample_report

from bnfold.report.html import render_html

BROWSER = next(
    (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None
)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no headless Chromium on PATH (chromium or chromium-browser; apt-get install chromium)"
)

WIDTH = 1200
GREEN, RED, BLUE, BACKGROUND = (0x1A, 0x7F, 0x37), (0xCF, 0x22, 0x2E), (0x09, 0x69, 0xDA), (0xF6, 0xF8, 0xFA)


def screenshot(report: dict, folder: Path, height: int) -> np.ndarray:
    """The report rendered to HTML, drawn by headless Chromium in a WIDTH x height window: RGB pixels."""
    page, png = folder / "report.html", folder / "report.png"
    page.write_text(render_html(report), encoding="utf-8")
    assert BROWSER is not None
    subprocess.run(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={folder / 'profile'}",
            f"--screenshot={png}",
            f"--window-size={WIDTH},{height}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return read_png(png.read_bytes())


def read_png(data: bytes) -> np.ndarray:
    """An 8-bit RGB or RGBA PNG as a (height, width, 3) array."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp, chunks, i = 3 if colour == 2 else 4, [], 8
    while i < len(data):
        (size,), kind = struct.unpack(">I", data[i : i + 4]), data[i + 4 : i + 8]
        if kind == b"IDAT":
            chunks.append(data[i + 8 : i + 8 + size])
        i += 12 + size
    raw = np.frombuffer(zlib.decompress(b"".join(chunks)), dtype=np.uint8).reshape(height, width * bpp + 1)
    pixels = np.zeros((height, width * bpp), dtype=np.uint8)
    prior = pixels[0]
    for r in range(height):
        pixels[r] = _unfilter(int(raw[r, 0]), raw[r, 1:], prior, bpp)
        prior = pixels[r]
    return pixels.reshape(height, width, bpp)[:, :, :3]


def _unfilter(kind: int, line: np.ndarray, prior: np.ndarray, bpp: int) -> np.ndarray:
    if kind == 0:
        return line
    if kind == 1:  # Sub: a running sum along the row, per channel
        return np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.uint64).astype(np.uint8).ravel()
    if kind == 2:  # Up
        return line + prior
    out, above = line.tolist(), prior.tolist()
    for i in range(len(out)):  # Average and Paeth depend on the byte just decoded
        a = out[i - bpp] if i >= bpp else 0
        b = above[i]
        if kind == 3:
            out[i] = (out[i] + ((a + b) >> 1)) & 255
            continue
        c = above[i - bpp] if i >= bpp else 0
        pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
        out[i] = (out[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    return np.array(out, dtype=np.uint8)


def share(pixels: np.ndarray, colour: tuple[int, int, int]) -> float:
    return float(np.mean(np.all(pixels == colour, axis=-1)))


def count(pixels: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int(np.sum(np.all(pixels == colour, axis=-1)))


def test_the_passing_report_draws_a_green_banner_and_fits_the_page(tmp_path: Path) -> None:
    pixels = screenshot(sample_report(), tmp_path, 3000)
    assert pixels.shape == (3000, WIDTH, 3)
    assert share(pixels[5:40], GREEN) > 0.9 and count(pixels[:60], RED) == 0
    drawn = np.flatnonzero(~np.all(pixels == BACKGROUND, axis=-1).all(axis=1))  # rows not plain background
    # every section is there (a page cut short would end early), and the page ends before the window does:
    # no runaway chart, no horizontal scrollbar along the bottom
    assert 1800 < drawn[-1] < 3000 - 100, drawn[-1]
    blue_rows = np.flatnonzero(np.all(pixels == BLUE, axis=-1).any(axis=1))
    assert blue_rows[-1] - blue_rows[0] > 400  # folded bars in the latency chart, and far below, the histogram


def test_the_failing_report_draws_a_red_banner_and_red_error_bars(tmp_path: Path) -> None:
    pixels = screenshot(failing_report(), tmp_path, 1200)
    assert pixels.shape == (1200, WIDTH, 3)
    assert share(pixels[5:40], RED) > 0.9 and count(pixels[:60], GREEN) == 0
    assert count(pixels[200:], RED) > 2000  # the failing candidates' histograms, in parity, first
