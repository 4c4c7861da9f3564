"""Data Docs that render without the internet: the scripts, styles and fonts Great Expectations' pages load from
CDNs, served from a copy beside the runs' Data Docs instead.

GX 1.x's page templates name a dozen CDN files; a browser that cannot reach them (an air-gapped site, a locked-down
network) shows only a page's header. ``localise`` points every page of a run at one shared copy of those files,
``<data docs>/_assets/``, made from an assets folder (``LoopSettings.data_docs_assets_dir``: the WebJars from Maven
Central that ``python -m infra.data_docs fetch`` unpacks), with links relative to each page, so the pages work
served by the Airflow plugin and opened as files alike.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from functools import partial
from pathlib import Path

log = logging.getLogger(__name__)

ASSETS_DIR_NAME = "_assets"  # beside the runs' folders under reports/data_docs

# Each CDN URL of GX's templates -> the file under the assets folder (WebJars' layout: <library>/<version>/...).
# The library versions are the templates' own (font-awesome's CSS loads ../webfonts/ relative to itself).
CDN_FILES: dict[str, str] = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css":
        "bootstrap/4.3.1/dist/css/bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js":
        "bootstrap/4.3.1/dist/js/bootstrap.min.js",
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/3.7.1/dist/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js":
        "popper.js/1.12.9/dist/umd/popper.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css":
        "bootstrap-table/1.19.1/dist/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js":
        "bootstrap-table/1.19.1/dist/bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        "bootstrap-table/1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js",
    # The templates name 1.19.0 for the filter control's styles: 1.19.1's are the ones its script goes with.
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        "bootstrap-table/1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        "bootstrap-table/1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        "bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        "bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": "font-awesome/6.6.0/css/all.min.css",
    "https://cdn.jsdelivr.net/npm/vega@5": "vega/5.32.0/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite/5.23.0/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed/6.29.0/vega-embed.min.js",
}
# Folders a copied file loads from relative to itself.
FOLDERS = ("font-awesome/6.6.0/webfonts",)
# The file ``_copy`` leaves in the shared copy once it holds every file of the lists above (named after them, so a
# list changed by an upgrade copies again).
COMPLETE_MARKER = ".complete-" + hashlib.sha256(
    "\n".join(sorted({*CDN_FILES.values(), *FOLDERS})).encode()).hexdigest()[:12]
# A stylesheet no Maven artifact carries (a dark theme when the browser prefers one): its link is removed, as a
# browser that cannot reach it may wait on it before drawing the page.
DROPPED = ("https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css",)


def missing(assets: Path) -> list[str]:
    """The files and folders of ``CDN_FILES`` and ``FOLDERS`` that ``assets`` lacks (none: it is complete)."""
    return sorted(name for name in {*CDN_FILES.values(), *FOLDERS} if not (assets / name).exists())


def _copy(assets: Path, shared: Path) -> None:
    """Copy what the pages load from ``assets`` into ``shared``: each file once, whole (written aside, then renamed:
    two runs validated at once may copy the same file); then mark ``shared`` complete."""
    names = set(CDN_FILES.values())
    for folder in FOLDERS:
        names |= {path.relative_to(assets).as_posix() for path in (assets / folder).rglob("*") if path.is_file()}
    for name in sorted(names):
        target = shared / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial_copy = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            shutil.copyfile(assets / name, partial_copy)
            os.replace(partial_copy, target)
    (shared / COMPLETE_MARKER).touch()


def localise(run_dir: Path, assets: Path | None) -> bool:
    """Point every HTML page under ``run_dir`` (one run's Data Docs) at ``<run_dir>/../_assets`` instead of the
    CDNs, copying the files there from ``assets`` once (the first run's validation does; the next ones find the copy
    marked complete). False (pages left as GX wrote them, a warning logged) when no assets folder is set, or when the
    copy is not complete yet and the folder lacks a file."""
    if assets is None:
        return False
    shared = run_dir.parent / ASSETS_DIR_NAME
    if not (shared / COMPLETE_MARKER).exists():
        lacking = missing(assets)
        if lacking:
            log.warning("Data Docs of %s keep their CDN links: %s lacks %s (python -m infra.data_docs fetch)",
                        run_dir.name, assets,
                        ", ".join(lacking[:3]) + (f" and {len(lacking) - 3} more" if len(lacking) > 3 else ""))
            return False
        _copy(assets, shared)
    for page in run_dir.rglob("*.html"):
        original = page.read_text(encoding="utf-8")
        text = _TAG.sub(partial(_local_tag, shared=shared, folder=page.parent), original)
        if text != original:
            page.write_text(text, encoding="utf-8")
    return True


_TAG = re.compile(r"<(?:script|link)\b[^>]*>", re.IGNORECASE)
# Subresource integrity asks for a CORS fetch, which a page opened as a file cannot make of another file: the
# copies come from Maven Central (checksummed by Maven), so a local tag goes without.
_INTEGRITY = re.compile(r"""\s+(?:integrity|crossorigin)=(?:"[^"]*"|'[^']*')""", re.IGNORECASE)


def _local_tag(match: re.Match[str], *, shared: Path, folder: Path) -> str:
    """The tag ``match`` found, loading its CDN file from ``shared`` relative to ``folder``; "" for a dropped
    stylesheet; as it is when it loads nothing of ``CDN_FILES``."""
    tag = match.group(0)
    for url in DROPPED:
        if f'"{url}"' in tag:
            return ""
    for url, name in CDN_FILES.items():
        if f'"{url}"' in tag:
            local = Path(os.path.relpath(shared / name, folder)).as_posix()
            return _INTEGRITY.sub("", tag.replace(f'"{url}"', f'"{local}"'))
    return tag
