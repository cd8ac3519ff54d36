"""The documentation site builds with ``--strict`` (broken links, nav entries or API references fail)
from the repository's ``mkdocs.yml``, needs nothing from the network (no CDN script, stylesheet or
font; math is MathML written at build time), renders the docstrings' Markdown and math, every
public function and class appears in the API reference, and the gallery shows every figure."""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

for _pkg in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "latex2mathml"):
    if importlib.util.find_spec(_pkg.split(".")[0]) is None:
        pytest.skip(f"{_pkg} is not installed (pip install 'toymodel[docs]')", allow_module_level=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                           str(ROOT / "mkdocs.yml"), "-d", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out


def _api_modules():
    text = (DOCS / "api.md").read_text()
    return re.search(r"<!--\s*api:\s*(.*?)-->", text, re.S).group(1).split()


def _public(module):
    """Public functions and classes of ``module``: its ``__all__``, else what it defines."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, o in vars(module).items()
                 if not n.startswith("_") and getattr(o, "__module__", None) == module.__name__]
    for name in names:
        obj = getattr(module, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            yield name, obj


def test_site_builds_strict(site):
    assert (ROOT / "mkdocs.yml").is_file() and not (DOCS / "mkdocs.yml").exists()
    # only pages and their assets are published: not the hook, caches, PDFs or data files
    published = {p.suffix for p in site.rglob("*") if p.is_file()}
    assert not published & {".py", ".pyc", ".pdf", ".npz", ".yml"}, published
    for page in ("index", "quickstart", "theory", "gallery", "cli", "api"):
        path = site / ("index.html" if page == "index" else f"{page}/index.html")
        assert path.is_file(), path


def test_every_public_function_is_in_the_api_reference(site):
    html = (site / "api" / "index.html").read_text()
    ids = set(re.findall(r'id="([\w.]+)"', html))
    documented = [m for m in _api_modules() if importlib.util.find_spec(m) is not None]
    assert {"toymodel.theory", "toymodel.dynamics", "toymodel.regimes"} <= set(documented)
    missing = []
    modules = {}
    for name in documented:
        try:
            modules[name] = importlib.import_module(name)
        except ImportError:  # an optional dependency is missing here; griffe still documents it
            continue
    # an object re-exported by several documented modules (toymodel.agreement is
    # toymodel.scan.agreement, defined in a private module) is documented under any of them
    homes = {}
    for name, module in modules.items():
        for attr, obj in _public(module):
            homes.setdefault(id(obj), set()).add(f"{name}.{attr}")
    for name, module in modules.items():
        assert name in ids, f"module {name} not rendered"
        for attr, obj in _public(module):
            where = {f"{name}.{attr}", f"{getattr(obj, '__module__', '')}.{attr}"} | homes[id(obj)]
            if not where & ids:
                missing.append(f"{name}.{attr}")
    assert not missing, f"public names missing from the API reference: {missing}"


def _pages(site):
    return sorted(site.rglob("*.html"))


def _prose(html):
    """``html`` without code blocks, scripts and rendered math: what a reader sees as text."""
    for pattern in (r"<pre\b.*?</pre>", r"<script\b.*?</script>", r"<math\b.*?</math>"):
        html = re.sub(pattern, "", html, flags=re.S)
    return html


# TeX left in the page: $...$ or \(...\) / \[...\] around a backslash command
_RAW_TEX = re.compile(r"\$[^$<>\n]*\\[A-Za-z]+[^$<>\n]*\$|\\\(.*?\\\)|\\\[.*?\\\]", re.S)


def test_site_uses_nothing_from_the_network(site):
    """Every script, stylesheet, font, image and iframe is a file of the site (no CDN)."""
    tag = re.compile(r"<(?:script|link|img|iframe|source|video|audio|embed|object)\b[^>]*>", re.I)
    remote = re.compile(r"\b(?:src|href|data)=[\"']?(?:https?:)?//", re.I)
    for page in _pages(site):
        hits = [t for t in tag.findall(page.read_text())
                if remote.search(t) and not re.search(r"rel=[\"']?(?:canonical|alternate)", t)]
        assert not hits, f"{page.relative_to(site)} loads from the network: {hits}"
    for css in site.rglob("*.css"):
        assert not re.search(r"@import\s+(?:url\()?[\"']?(?:https?:)?//|url\([\"']?(?:https?:)?//",
                             css.read_text()), css


def test_diagrams_render_from_a_local_mermaid(site):
    """The theme fetches mermaid from a CDN unless a global ``mermaid`` exists: the site ships one
    and every page with a diagram loads it, so docs/architecture.md draws offline too."""
    page = (site / "architecture" / "index.html").read_text()
    assert 'class="mermaid"' in page
    assert re.search(r'<script[^>]+src="[./]*javascripts/vendor/mermaid\.min\.js"', page)
    assert (site / "javascripts" / "vendor" / "mermaid.min.js").stat().st_size > 1_000_000


def test_math_is_rendered_at_build_time(site):
    for page, least in (("theory", 50), ("index", 2), ("quickstart", 3), ("api", 20)):
        html = (site / ("index.html" if page == "index" else f"{page}/index.html")).read_text()
        assert html.count("<math ") >= least, page
        assert 'class="arithmatex"' not in html, page
        if page != "api":  # the API page: test_docstring_markup_is_rendered
            raw = _RAW_TEX.findall(_prose(html))
            assert not raw, f"{page}: TeX left unrendered: {raw[:5]}"
    theory = (site / "theory" / "index.html").read_text()
    # display formulas, fractions, roots and accents made it through
    assert '<math xmlns="http://www.w3.org/1998/Math/MathML" display="block">' in theory
    for tag in ("<mfrac>", "<msqrt>", '<mover accent="true">', "<msub>", "<msup>"):
        assert tag in theory, tag


def test_docstring_markup_is_rendered(site):
    html = (site / "api" / "index.html").read_text()
    # no reST role survives anywhere on the page (prose, tables, signatures)
    for role in (":class:", ":func:", ":math:", ":mod:", ":meth:", ":attr:", ":data:", ":exc:",
                 ".. math::"):
        assert role not in html, role
    # docstring math ($...$) is MathML, in descriptions and in parameter tables alike: the
    # SphereSGD section (parameters elr = $\tilde\eta$, radius = $\rho$) as the example
    anchor = 'id="toymodel.bridge.SphereSGD"'
    assert anchor in html
    start = html.index(anchor)
    end = next((m.start() for m in re.finditer(r'id="toymodel\.[\w.]+"', html[start + len(anchor):])
                if not m.group().startswith('id="toymodel.bridge.SphereSGD')), len(html) - start)
    section = html[start:start + len(anchor) + end]
    raw = _RAW_TEX.findall(re.sub(r"<math\b.*?</math>", "", section, flags=re.S))
    assert not raw, f"SphereSGD docstring: TeX left unrendered: {raw}"
    assert "<math " in section
    assert not _RAW_TEX.findall(_prose(html).replace(section, ""))


def test_math_the_converter_cannot_render_fails_the_build():
    sys.path.insert(0, str(DOCS))
    try:
        import _hooks
    finally:
        sys.path.remove(str(DOCS))
    ok = _hooks.render_math('<p><span class="arithmatex">\\(\\tilde\\eta_i\\le1/\\alpha_i\\)</span></p>')
    assert "<math " in ok and '<mover accent="true">' in ok and "arithmatex" not in ok
    # $$...$$ inside a paragraph is display math, as in TeX
    shown = _hooks.render_math('<p>so $<span class="arithmatex">\\(x\\)</span>$ holds</p>')
    assert 'display="block"' in shown and "$" not in shown
    for bad in (r"\alpah_i", r"\left( x", r"x^"):
        with pytest.raises(ValueError, match="page.md"):
            _hooks.render_math(f'<span class="arithmatex">\\({bad}\\)</span>', where="page.md")


def test_name_colon_description_items_become_descriptions():
    sys.path.insert(0, str(DOCS))
    try:
        import _hooks
    finally:
        sys.path.remove(str(DOCS))
    doc = ("Summary.\n\nParameters\n----------\nelr : the total ELR $\\tilde\\eta>0$.\n"
           "x : float, optional\n    A real type.\nmomentum, weight_decay : 0 unless ``allow``.\n"
           "\nReturns\n-------\nout : xarray.Dataset\n    The data.")
    got = _hooks.name_colon_description(doc)
    assert "elr\n    the total ELR $\\tilde\\eta>0$." in got
    assert "momentum, weight_decay\n    0 unless ``allow``." in got
    assert "x : float, optional" in got and "out : xarray.Dataset" in got  # real types stay


def test_no_reference_to_files_the_repository_does_not_ship():
    names = ("THEORY.md", "STYLE.md")
    paths = [ROOT / "README.md"]
    for folder in ("toymodel", "kernels", "figures", "docs"):
        paths += [p for p in (ROOT / folder).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts
                  and p.suffix.lower() not in (".png", ".pdf", ".npz", ".nc", ".pyc")]
    bad = [f"{p.relative_to(ROOT)}: {n}" for p in paths for n in names
           if n in p.read_text(errors="replace")]
    assert not bad, bad


def test_cli_reference_lists_every_subcommand(site):
    from toymodel.cli import build_parser
    import argparse

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    html = (site / "cli" / "index.html").read_text()
    for name in sub.choices:
        assert f"toymodel {name}" in html, name
    assert "--quick" in html and "--only" in html


def test_gallery_shows_every_figure_png(site):
    import toymodel.figures as figures

    html = (site / "gallery" / "index.html").read_text()
    pngs = sorted((DOCS / "img").glob("fig[0-9][0-9]_*.png"))
    assert {p.stem for p in pngs} >= {n for n in figures.FIGURES if not n.startswith("fig07")}
    for png in pngs:
        assert f"img/{png.name}" in html
        assert png.stat().st_size < 250_000, png
        assert (site / "img" / png.name).is_file()
