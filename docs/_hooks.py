"""MkDocs hooks of the documentation site (named in mkdocs.yml; not a page).

* ``benchmarks/README.md`` and everything under ``benchmarks/results/`` become pages and files of
  the site at the same paths, so the benchmark scripts' own README is a page and the results the
  pages link to (``benchmarks/results/compare/compare.md``) open on the site.
* In those pages, which are written for GitHub, a relative link to something the site does not
  hold (a script elsewhere in the repository) becomes the path in code, not a broken link.
* The docstrings' Sphinx roles (``:func:`x```, ``:class:`~a.B```) become code, linked where the
  API reference documents the object.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

BENCHMARKS = "benchmarks"
_SKIP_PARTS = {"__pycache__", ".ipynb_checkpoints"}
_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]\n]+)\]\((?P<target>[^)\s]+)\)")
_ROLE = re.compile(
    r":(?:func|class|mod|meth|attr|data|obj|exc):<code>"
    r"(?:(?P<title>[^<&]+?) &lt;(?P<target>[\w.]+)&gt;|(?P<tilde>~?)(?P<name>[\w.]+)(?:\(\))?)</code>"
)


def _repo(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_files(files: Files, config) -> Files:
    root = _repo(config)
    bench = root / BENCHMARKS
    paths = [bench / "README.md"]
    if (bench / "results").is_dir():
        paths += sorted(p for p in (bench / "results").rglob("*") if p.is_file())
    paths += sorted(bench.glob("*.py")) + sorted(bench.glob("*.sh"))
    for path in paths:
        rel = path.relative_to(root)
        if not path.is_file() or _SKIP_PARTS & set(rel.parts) or any(p.startswith(".") for p in rel.parts):
            continue
        if files.get_file_from_path(rel.as_posix()) is None:
            files.append(File(rel.as_posix(), str(root), config.site_dir, config.use_directory_urls))
    return files


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    src = page.file.src_uri
    if not src.startswith(BENCHMARKS + "/"):
        return markdown
    here = posixpath.dirname(src)

    def fix(m: re.Match[str]) -> str:
        target = m.group("target")
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):
            return m.group(0)  # a URL, an anchor or an absolute path: as written
        path = target.split("#", 1)[0]
        resolved = posixpath.normpath(posixpath.join(here, path))
        if files.get_file_from_path(resolved) is not None:
            return m.group(0)
        for index in ("README.md", "index.md"):  # a folder with a README opens as its page
            if files.get_file_from_path(posixpath.join(resolved, index)) is not None:
                return f"[{m.group('text')}]({path.rstrip('/')}/{index})"
        shown = posixpath.normpath(posixpath.join(here, path))
        return f"{m.group('text')} (`{shown}`)" if m.group("text").strip("`") != shown else f"`{shown}`"

    return _LINK.sub(fix, markdown)


def on_page_content(html: str, page, config, files: Files) -> str:
    def role(m: re.Match[str]) -> str:
        if m.group("target"):  # :meth:`title <target>`
            name, shown = m.group("target"), m.group("title")
        else:
            name = m.group("name")
            shown = name.rsplit(".", 1)[-1] if m.group("tilde") else name
        return f'<autoref identifier="{name}" optional><code>{shown}</code></autoref>'

    html = _ROLE.sub(role, html)
    return html.replace("<p>Example::</p>", "<p>Example:</p>")
