"""Open a report in headless Chromium: check its images loaded and nothing overflows; screenshot."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]

# Runs on load: writes what it measured into a <pre id="check"> that --dump-dom prints.
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var doc = document.documentElement;
  var wide = Array.prototype.slice.call(document.body.querySelectorAll('*')).filter(function (e) {
    var r = e.getBoundingClientRect(); return r.right > doc.clientWidth + 1 && !e.closest('.scroll');
  }).map(function (e) { return e.tagName; });
  var clipped = Array.prototype.slice.call(document.querySelectorAll('.scroll')).filter(
    function (e) { return e.scrollWidth > e.clientWidth + 1; }).map(function (e) {
      return e.textContent.slice(0, 40); });
  var det = document.querySelectorAll('details');
  var out = {images: imgs.length, widths: imgs.map(function (i) { return i.naturalWidth; }),
             scrollWidth: doc.scrollWidth, clientWidth: doc.clientWidth, overflowing: wide,
             clipped: clipped, details: det.length,
             detailsOpen: Array.prototype.filter.call(det, function (d) { return d.open; }).length};
  var pre = document.createElement('pre'); pre.id = 'check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name) or (
            f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
        )
        if path:
            return path
    return None


def inspect(report: Path, screenshot: Path, width: int = 1280) -> dict:
    """Load ``report`` at ``width`` px; returns the probe's measurements; writes a screenshot."""
    exe = chromium()
    assert exe is not None
    with tempfile.TemporaryDirectory() as tmp:
        probe_page = Path(tmp) / "probe.html"
        probe_page.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
        common = [exe, *FLAGS, f"--window-size={width},2000"]
        dom = subprocess.run(
            [
                *common,
                f"--user-data-dir={tmp}/u1",
                "--virtual-time-budget=5000",
                "--dump-dom",
                probe_page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        subprocess.run(
            [
                *common,
                f"--user-data-dir={tmp}/u2",
                f"--screenshot={screenshot}",
                report.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    m = re.search(r'<pre id="check">(.*?)</pre>', dom, re.S)
    assert m, f"probe did not run; chromium printed: {dom[:500]}"
    return json.loads(html.unescape(m.group(1)))
