"""The HTML report in a real browser: headless Chromium renders it without script errors and
every embedded figure decodes (natural width > 0). Skipped, with the reason, where no Chromium is
installed (`.ci/run` installs Debian's `chromium` where it can)."""

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from raypoison.cli import main
from raypoison.store.sink import ParquetSink
from raypoison.store.storage import Location
from tests.test_report_format import _benchmark_rows

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which(
    "google-chrome")
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium on this machine "
                                "(apt-get install chromium)")

# Put first in <head> of a copy of the page: records script errors and each image's natural
# width once the page has loaded, into an attribute that --dump-dom prints.
PROBE = ("<script>window.__errors=[];window.addEventListener('error',e=>window.__errors.push("
         "String(e.message||(e.target&&e.target.src?'failed to load '+e.target.src.slice(0,40)"
         ":e.type))),true);window.addEventListener('load',()=>document.body.setAttribute("
         "'data-probe',JSON.stringify({errors:window.__errors,images:[...document.images].map("
         "i=>i.naturalWidth),tables:document.querySelectorAll('table').length,"
         "width:document.documentElement.scrollWidth})));</script>")


def _render(page: Path, tmp_path: Path) -> dict:
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    out = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900",
         "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    found = re.search(r'data-probe="([^"]*)"', out.stdout)
    assert found, f"the page did not finish loading: {out.stderr[-1500:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.slow
def test_the_html_report_renders_in_chromium_with_every_figure(tmp_path):
    out = tmp_path / "out"
    sink = ParquetSink(Location.parse(str(out)), "r")
    for row in _benchmark_rows():
        sink.add([row])
    sink.flush()
    page = tmp_path / "report.html"
    assert main(["report", str(out), "--compare", "feature_collision", "none", "--html",
                 str(page)]) == 0
    probe = _render(page, tmp_path)
    assert probe["errors"] == []
    assert len(probe["images"]) == 3 and min(probe["images"]) > 0  # two forests, the compare
    assert probe["tables"] >= 3
    assert probe["width"] <= 1280  # no horizontal scrolling at a laptop's width

    broken = tmp_path / "broken.html"  # the probe does see a figure that does not decode
    broken.write_text(page.read_text().replace("base64,iVBOR", "base64,AAAA", 1))
    probe = _render(broken, tmp_path)
    assert sorted(probe["images"])[0] == 0 and probe["errors"]
