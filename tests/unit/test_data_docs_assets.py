"""Data Docs pages pointed at local copies of what they load from CDNs (``ml.data_docs_assets``), on the pages a real
validation writes."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest

import great_expectations
from ml import data_docs_assets
from ml import validation as validate
from ml.settings import LoopSettings
from use_cases.flight_delay import validation as flight_validation
from use_cases.flight_delay.source import load_completed

pytestmark = pytest.mark.slow

TEMPLATES = Path(great_expectations.__file__).parent / "render" / "view" / "templates"
# What a page loads (scripts and stylesheets), not the links a reader may follow.
_URL = re.compile(r"""<(?:script|link)\b[^>]*?(?:src|href)=["'](https?://[^"']+)["']""")
_LOCAL = re.compile(r"""<(?:script|link)\b[^>]*?(?:src|href)="([^"]+)"[^>]*>""")


def _assets(folder: Path) -> Path:
    """An assets folder laid out as ``python -m infra.data_docs fetch`` makes it, each file holding its name."""
    for name in data_docs_assets.CDN_FILES.values():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"/* {name} */")
    for name in data_docs_assets.FOLDERS:
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "font.woff2").write_bytes(b"font")
    return folder


def _validate(tmp_path: Path, assets: Path | None, run_id: str) -> Path:
    settings = LoopSettings(loop_data_dir=tmp_path / "data", min_training_rows=100, data_docs_assets_dir=assets)
    report = validate.validate_snapshot(load_completed((1, 1), limit=500), settings, run_id=run_id,
                                        suite=flight_validation.SUITE)
    return Path(report.data_docs_path).parent


def _pages(run_dir: Path) -> list[Path]:
    pages = sorted(run_dir.rglob("*.html"))
    assert len(pages) >= 2  # the index and the run's validation result
    return pages


def test_every_cdn_link_of_the_gx_templates_is_mapped_or_dropped():
    """A Great Expectations upgrade that loads another file from a CDN fails here, not silently offline."""
    urls = {url for template in TEMPLATES.rglob("*.j2") for url in _URL.findall(template.read_text())}
    assert urls, f"no CDN link found in {TEMPLATES}"
    assert urls <= set(data_docs_assets.CDN_FILES) | set(data_docs_assets.DROPPED), \
        urls - set(data_docs_assets.CDN_FILES) - set(data_docs_assets.DROPPED)


def test_the_pom_fetches_the_library_versions_the_pages_are_pointed_at():
    """Each file ``CDN_FILES`` names lies under ``<library>/<version>/`` of a WebJar of infra/data_docs/pom.xml."""
    import xml.etree.ElementTree as ET

    pom = Path(__file__).resolve().parents[2] / "infra" / "data_docs" / "pom.xml"
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    fetched = {(d.findtext("m:artifactId", namespaces=ns), d.findtext("m:version", namespaces=ns))
               for d in ET.parse(pom).getroot().iterfind("m:dependencies/m:dependency", ns)}
    named = {tuple(name.split("/")[:2]) for name in (*data_docs_assets.CDN_FILES.values(), *data_docs_assets.FOLDERS)}
    assert named == fetched


def test_the_pages_of_a_run_load_one_shared_copy_by_relative_links(tmp_path):
    assets = _assets(tmp_path / "assets")
    for run_id in ("run-a", "run-b"):
        run_dir = _validate(tmp_path, assets, run_id)
        for page in _pages(run_dir):
            text = page.read_text()
            assert not [url for url in _URL.findall(text) if url in data_docs_assets.CDN_FILES
                        or url in data_docs_assets.DROPPED], page
            local = [(src, tag) for tag in re.findall(r"<(?:script|link)\b[^>]*>", text)
                     for src in _LOCAL.findall(tag) if not src.startswith(("http:", "https:", "data:"))
                     and data_docs_assets.ASSETS_DIR_NAME in src]
            assert local, page
            for src, tag in local:
                assert (page.parent / src).resolve().is_file(), (page, src)
                assert "integrity=" not in tag and "crossorigin=" not in tag, tag
    shared = run_dir.parent / data_docs_assets.ASSETS_DIR_NAME
    assert sorted(p.name for p in shared.rglob("*") if p.is_file() and not p.name.startswith(".")) == sorted(
        {Path(n).name for n in data_docs_assets.CDN_FILES.values()} | {"font.woff2"})


def test_the_shared_copy_is_made_once_and_serves_later_runs(tmp_path, monkeypatch):
    """The first run copies the files and marks the copy complete; a later run neither checks the assets folder nor
    copies again, and its pages load the same copy (here the folder is gone by then)."""
    assets = _assets(tmp_path / "assets")
    first = _validate(tmp_path, assets, "run-a")
    shared = first.parent / data_docs_assets.ASSETS_DIR_NAME
    assert [p.name for p in shared.iterdir() if p.name.startswith(".complete-")]
    shutil.rmtree(assets)
    copies = []
    monkeypatch.setattr(data_docs_assets, "_copy", lambda *args: copies.append(args))
    later = _validate(tmp_path, assets, "run-b")
    assert copies == []
    for page in _pages(later):
        text = page.read_text()
        assert "https://code.jquery.com/jquery-3.7.1.min.js" not in text
        srcs = [src for src in _LOCAL.findall(text) if data_docs_assets.ASSETS_DIR_NAME in src]
        assert srcs and all((page.parent / src).resolve().is_file() for src in srcs), page


@pytest.mark.parametrize("assets", ["none", "incomplete"])
def test_without_a_complete_assets_folder_the_pages_keep_their_cdn_links(tmp_path, caplog, assets):
    folder = None
    if assets == "incomplete":
        folder = _assets(tmp_path / "assets")
        (folder / data_docs_assets.CDN_FILES["https://code.jquery.com/jquery-3.7.1.min.js"]).unlink()
    with caplog.at_level(logging.WARNING, logger="ml.data_docs_assets"):
        run_dir = _validate(tmp_path, folder, "cdn")
    assert any("https://code.jquery.com/jquery-3.7.1.min.js" in page.read_text() for page in _pages(run_dir))
    assert not (run_dir.parent / data_docs_assets.ASSETS_DIR_NAME).exists()
    if assets == "incomplete":
        assert "keep their CDN links" in caplog.text and "jquery.min.js" in caplog.text


def test_with_the_fetched_assets_the_pages_render_in_a_browser_without_the_internet(tmp_path):
    """The WebJars from Maven Central (``infra.data_docs``), a real validation's pages opened as files in Chromium
    with every http(s) request refused: the tables are drawn by bootstrap-table's script, the icons by Font Awesome's
    font. With the CDN links, the same browser showed only the pages' headers."""
    import shutil

    from playwright.sync_api import sync_playwright

    from infra.data_docs import assets

    executable = shutil.which("chromium")
    assert executable, "chromium not found: `apt-get install chromium` (README, Prerequisites)"
    run_dir = _validate(tmp_path, assets.fetch(), "offline")
    pages = [run_dir / "index.html", next((run_dir / "validations").rglob("*.html"))]
    kept = Path(__file__).resolve().parents[2] / ".local" / "test-logs"
    kept.mkdir(parents=True, exist_ok=True)
    refused: list[str] = []

    def offline(route):
        if route.request.url.startswith(("http:", "https:")):
            refused.append(route.request.url)
            return route.abort()
        return route.continue_()

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            for name, page_file in zip(("index", "run"), pages, strict=True):
                page = chromium.new_page(viewport={"width": 1400, "height": 900})
                page.route("**/*", offline)
                page.goto(page_file.as_uri(), wait_until="load")
                page.locator(".bootstrap-table").first.wait_for(timeout=30_000)  # made by the table's script
                assert page.evaluate("document.fonts.load('900 16px \"Font Awesome 6 Free\"')"
                                     ".then(fonts => fonts.length)") == 1
                page.screenshot(path=kept / f"data-docs-offline-{name}.png")
                page.close()
        finally:
            chromium.close()
    assert not [url for url in refused if url in data_docs_assets.CDN_FILES], refused
