"""Fetch and cache the WebJars behind the Data Docs pages' CDN links, unpacked, for ``ml.data_docs_assets``.

The cache is filled atomically (``infra.jvm.fill_atomically``): Maven copies the WebJars of ``pom.xml`` into a
staging folder, their ``META-INF/resources/webjars/`` trees are unpacked beside them, every file the pages need
is checked to be there, and only then is the folder renamed into place with a ``COMPLETE`` marker.
"""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
from pathlib import Path

from infra import jvm
from ml import data_docs_assets

log = logging.getLogger(__name__)

POM = Path(__file__).with_name("pom.xml")
# The cache entry's name: a new one when the pom's list changes (bump with it).
ASSETS_VERSION = "gx1-1"
WEBJAR_ROOT = "META-INF/resources/webjars/"
INSTALL_HINT = "on Debian/Ubuntu: apt-get install openjdk-17-jre-headless maven"


class DataDocsAssetsError(RuntimeError):
    """The assets could not be fetched (no Java or Maven, a failed download, a file missing)."""


def default_cache_dir() -> Path:
    """Where fetched assets live: ``$DATA_DOCS_ASSETS_CACHE`` or ``~/.cache/retrain-loop/data-docs``."""
    override = os.environ.get("DATA_DOCS_ASSETS_CACHE")
    return Path(override) if override else Path.home() / ".cache" / "retrain-loop" / "data-docs"


def cached(cache_dir: Path | None = None) -> Path | None:
    """The assets folder if the cache holds a complete one, else None."""
    target = (cache_dir or default_cache_dir()) / ASSETS_VERSION
    return target / "webjars" if jvm.is_complete(target) else None


def _wanted(name: str) -> bool:
    """Whether the pages load ``name`` (a path under ``WEBJAR_ROOT``): the WebJars also carry sources and maps."""
    return ".." not in Path(name).parts and (name in data_docs_assets.CDN_FILES.values() or name.startswith(
        tuple(f"{folder}/" for folder in data_docs_assets.FOLDERS)))


def unpack(jars: Path, into: Path) -> None:
    """Unpack the files the pages load from the WebJars in ``jars`` (``pom.xml``'s, as Maven copies them) into
    ``into`` (``<library>/<version>/...``, nothing outside it), the value of ``DATA_DOCS_ASSETS_DIR``. Raises
    DataDocsAssetsError on a corrupt jar or a file the pages load that no jar holds."""
    for jar in sorted(jars.glob("*.jar")):
        try:
            with zipfile.ZipFile(jar) as zf:
                for member in zf.infolist():
                    name = member.filename
                    if member.is_dir() or not name.startswith(WEBJAR_ROOT) or not _wanted(name[len(WEBJAR_ROOT):]):
                        continue
                    target = into / name[len(WEBJAR_ROOT):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except zipfile.BadZipFile as exc:
            raise DataDocsAssetsError(f"downloaded WebJar {jar.name} is corrupt ({exc})") from exc
    lacking = data_docs_assets.missing(into)
    if lacking:
        raise DataDocsAssetsError(f"the WebJars in {jars} lack {', '.join(lacking)}: infra/data_docs/pom.xml and "
                                  "ml/data_docs_assets.py name other versions")


def fetch(cache_dir: Path | None = None, *, offline: bool = False) -> Path:
    """The assets folder (``LoopSettings.data_docs_assets_dir``), downloading the WebJars with Maven if not cached.

    Raises DataDocsAssetsError when Java or Maven is missing, the download fails or a file the pages load is not in
    the WebJars; nothing partial is kept.
    """
    cache_dir = cache_dir or default_cache_dir()
    hit = cached(cache_dir)
    if hit is not None:
        return hit
    jvm.require_tool("java", "Java 17", needed_for="to fetch the Data Docs assets", install=INSTALL_HINT,
                     error=DataDocsAssetsError)
    mvn = jvm.require_tool("mvn", "Maven", needed_for="to fetch the Data Docs assets", install=INSTALL_HINT,
                           error=DataDocsAssetsError)
    target = cache_dir / ASSETS_VERSION

    def fill(staging: Path) -> None:
        cmd = [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={staging / 'jars'}"]
        if offline:
            cmd.insert(1, "-o")
        log.info("fetching the Data Docs assets (WebJars) from Maven Central into %s", target)
        jvm.run_maven(cmd, artifact="the WebJars of infra/data_docs/pom.xml", error=DataDocsAssetsError)
        unpack(staging / "jars", staging / "webjars")
        shutil.rmtree(staging / "jars")

    jvm.fill_atomically(target, fill, what="Data Docs assets")
    return target / "webjars"
