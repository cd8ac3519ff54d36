"""MkDocs hooks of the toymodel site (registered in the repository's ``mkdocs.yml``).

* ``on_page_markdown``: expand ``<!-- cli-reference -->`` into the help of every ``toymodel``
  subcommand, generated from the argparse parser (so the reference never drifts from the code),
  and ``<!-- api: mod1 mod2 ... -->`` into mkdocstrings ``::: mod`` blocks for the modules that
  exist at build time (the others are listed in a note).
  ``<!-- gallery -->`` becomes one section per figure image under ``docs/img/`` with the caption
  its script defines (``CAPTION``), so captions and images come from the same place.
* ``on_page_content``: render math at build time. ``pymdownx.arithmatex`` (generic mode) marks
  ``$...$`` and ``$$...$$`` of the pages and of the docstrings (mkdocstrings renders them with the
  same extensions) as ``<span class="arithmatex">\\(...\\)</span>`` /
  ``<div class="arithmatex">\\[...\\]</div>``; each becomes MathML (``latex2mathml``), which
  browsers typeset natively, so the site needs no math script from the network. A formula the
  converter cannot handle fails the build, naming the page and the TeX.
* ``NameColonDescription`` (a griffe extension, listed under mkdocstrings' ``extensions`` in
  ``mkdocs.yml``): the project's numpy-style lists are ``name : description`` on one line (no
  types), which the numpy parser would read as a type and show raw in the Type column; it moves
  such a description to the next line, where the parser takes it as the description.
"""
from __future__ import annotations

import argparse
import html
import importlib
import importlib.util
import os
import re
from pathlib import Path

_API = re.compile(r"<!--\s*api:\s*(.*?)-->", re.S)
_CLI = "<!-- cli-reference -->"
_GALLERY = "<!-- gallery -->"
# arithmatex's generic output: inline \(...\) in a span, display \[...\] (or a bare
# \begin{env}...\end{env}) in a div; the TeX inside is HTML-escaped
_MATH = re.compile(r'(\$(?=<span))?<(span|div) class="arithmatex">(.*?)</\2>(?(1)\$)', re.S)
_DELIMS = {r"\(": r"\)", r"\[": r"\]"}
_MATHML_NS = "http://www.w3.org/1998/Math/MathML"
# MathML Core (what browsers render) ignores mathvariant but "normal" on a one-letter <mi>:
# letters in the other variants are written as Unicode mathematical alphanumerics instead
_ALNUM = {"bold": (0x1D400, 0x1D41A, {}),
          "script": (0x1D49C, 0x1D4B6, {"B": 0x212C, "E": 0x2130, "F": 0x2131, "H": 0x210B,
                                       "I": 0x2110, "L": 0x2112, "M": 0x2133, "R": 0x211B,
                                       "e": 0x212F, "g": 0x210A, "o": 0x2134}),
          "fraktur": (0x1D504, 0x1D51E, {"C": 0x212D, "H": 0x210C, "I": 0x2111, "R": 0x211C,
                                        "Z": 0x2128}),
          "double-struck": (0x1D538, 0x1D552, {"C": 0x2102, "H": 0x210D, "N": 0x2115,
                                              "P": 0x2119, "Q": 0x211A, "R": 0x211D,
                                              "Z": 0x2124})}


def _alnum(text: str, variant: str) -> str:
    upper, lower, holes = _ALNUM[variant]
    out = []
    for ch in text:
        if ch in holes:
            out.append(chr(holes[ch]))
        elif "A" <= ch <= "Z":
            out.append(chr(upper + ord(ch) - 65))
        elif "a" <= ch <= "z":
            out.append(chr(lower + ord(ch) - 97))
        else:
            out.append(ch)
    return "".join(out)


def tex_to_mathml(tex: str, display: bool = False) -> str:
    """MathML for one TeX formula; ``ValueError`` for one the converter cannot handle."""
    import xml.etree.ElementTree as ET

    from latex2mathml.converter import convert

    try:
        mathml = convert(tex.strip(), display="block" if display else "inline")
        # alignment environments (aligned, cases, ...) come out with a literal & (not XML)
        root = ET.fromstring(mathml)
    except Exception as err:  # latex2mathml raises its own exception types
        raise ValueError(f"cannot convert {tex!r} to MathML: {err}") from err
    ns = "{%s}" % _MATHML_NS
    for el in root.iter():  # TeX's escaped specials inside \text{...} are left escaped
        if el.text and "\\" in el.text:
            el.text = re.sub(r"\\([_&%$#{}])", r"\1", el.text)
    unknown = sorted({el.text for el in root.iter() if el.text and "\\" in el.text})
    if unknown:  # latex2mathml writes a command it does not know as text (\alpah -> "\alpah")
        raise ValueError(f"cannot convert {tex!r} to MathML: unknown {', '.join(unknown)}")
    for el in list(root.iter()):
        variant = el.get("mathvariant")
        if el.tag == ns + "mi" and variant in _ALNUM and el.text:
            el.text = _alnum(el.text, variant)
            del el.attrib["mathvariant"]
        # an accent (\tilde, \bar, \dot, \vec, ...) sits on its base, not above it like a limit
        if el.tag == ns + "mover" and len(el) == 2 and el[1].tag == ns + "mo":
            el.set("accent", "true")
        # a prime is a raised glyph already: TeX's x' is x^\prime, but MathML draws the prime of
        # <msup><mi>x</mi><mi>′</mi></msup> as a tiny mark above the line; write x′ instead
        if el.tag in (ns + "msup", ns + "msubsup") and el[-1].tag == ns + "mi" \
                and el[-1].text and set(el[-1].text) <= set("\u2032\u2033\u2034"):
            *scripted, prime = list(el)
            for child in list(el):
                el.remove(child)
            prime.tag = ns + "mo"
            prime.attrib.update(lspace="0em", rspace="0em")
            if len(scripted) == 2:  # x_i': the subscript stays, the prime follows it
                sub = ET.Element(ns + "msub")
                sub.extend(scripted)
                scripted = [sub]
            el.tag = ns + "mrow"
            el.extend(scripted + [prime])
        # TeX spacing: a slash is an ordinary symbol (MathML would space it like a relation)
        if el.tag == ns + "mo" and el.text == "/":
            el.set("lspace", "0em")
            el.set("rspace", "0em")
        # and a function name (\sin, \arctan, \log, ...) is followed by a thin space unless
        # an opening parenthesis comes next
        rows = (ns + "mrow", ns + "math", ns + "mstyle", ns + "msqrt", ns + "mtd")
        for i in range(len(el) - 1 if el.tag in rows else -1, -1, -1):
            child, nxt = el[i], (el[i + 1] if i + 1 < len(el) else None)
            base = child[0] if child.tag in (ns + "msup", ns + "msub", ns + "msubsup") else child
            if (base.tag == ns + "mi" and base.text and len(base.text) > 1 and base.text.isalpha()
                    and nxt is not None and not (nxt.tag == ns + "mo" and nxt.text in "([")):
                el.insert(i + 1, ET.Element(ns + "mspace", width="0.167em"))
    ET.register_namespace("", _MATHML_NS)
    return ET.tostring(root, encoding="unicode", short_empty_elements=True)


def render_math(html_text: str, where: str = "") -> str:
    """Replace every arithmatex element of ``html_text`` by MathML."""
    def one(m):
        dollars, tag, body = m.group(1), m.group(2), html.unescape(m.group(3)).strip()
        opened = body[:2]
        if opened in _DELIMS and body.endswith(_DELIMS[opened]):
            body = body[2:-2]
        # $$...$$ inside a paragraph (not a block of its own) arrives as inline math between two
        # literal dollars: TeX makes it display math, and so does this (a block <math> in a span)
        display = tag == "div" or bool(dollars)
        try:
            mathml = tex_to_mathml(body, display=display)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        return f'<{tag} class="{"math display" if display else "math"}">{mathml}</{tag}>'

    return _MATH.sub(one, html_text)


def on_page_markdown(markdown, page, config, files, **kwargs):
    if _CLI in markdown:
        markdown = markdown.replace(_CLI, cli_reference())
    if _GALLERY in markdown:
        markdown = markdown.replace(_GALLERY, gallery(config["docs_dir"]))
    return _API.sub(lambda m: api_blocks(m.group(1).split()), markdown)


def on_page_content(html_text, page, config, files, **kwargs):
    if 'class="arithmatex"' not in html_text:
        return html_text
    return render_math(html_text, where=page.file.src_uri)


# numpy sections whose items are "name : ..." (Returns/Raises items name a type, so not these)
_NAMED_SECTIONS = {"parameters", "other parameters", "attributes", "keyword arguments",
                   "keyword args", "receives"}
_ITEM = re.compile(r"^(\*{0,2}[A-Za-z_]\w*(?:\s*,\s*\*{0,2}[A-Za-z_]\w*)*)\s+:\s+(\S.*)$")
# what a type looks like: "float", "int or None", "array_like, optional", "dict[str, float]"
_TYPE = re.compile(r"^[\w.\[\], |]+$")


def _is_type(text: str) -> bool:
    text = text.strip()
    return bool(_TYPE.match(text)) and len(text.replace(",", " ").split()) <= 3


def name_colon_description(doc: str) -> str:
    """Rewrite the ``name : description`` items of numpy sections as ``name`` + indented text."""
    lines, out, section = doc.splitlines(), [], None
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and set(nxt.strip()) == {"-"} and not line.startswith(" "):
            section = line.strip().lower()
        elif section in _NAMED_SECTIONS and not line.startswith(" "):
            m = _ITEM.match(line)
            if m and not _is_type(m.group(2)):
                out += [m.group(1), "    " + m.group(2)]
                continue
        out.append(line)
    return "\n".join(out)


try:
    from griffe import Extension as _GriffeExtension
except ImportError:  # griffe is what mkdocstrings loads this with; without it nothing calls this
    _GriffeExtension = object


class NameColonDescription(_GriffeExtension):
    """Griffe extension: apply `name_colon_description` to every docstring."""

    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None and " : " in obj.docstring.value:
            obj.docstring.value = name_colon_description(obj.docstring.value)


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def api_blocks(modules) -> str:
    """``::: module`` blocks for the modules that exist; a note lists the missing ones."""
    parts, missing = [], []
    for name in modules:
        if not _module_exists(name):
            missing.append(name)
            continue
        if name == "toymodel":
            # the package re-exports functions documented in their own modules below
            parts.append(f"::: {name}\n    options:\n      members: false\n")
        else:
            parts.append(f"::: {name}\n")
    if missing:
        parts.append('!!! note "Not in this build"\n    ' + ", ".join(f"`{m}`" for m in missing)
                     + " could not be found when the site was built.\n")
    return "\n".join(parts)


def _figures_package():
    return importlib.import_module("toymodel.figures")


def gallery(docs_dir) -> str:
    """One section per ``img/figNN_*.png`` with the caption from its figure script."""
    pkg = _figures_package()
    parts = []
    for png in sorted(Path(docs_dir, "img").glob("fig[0-9][0-9]_*.png")):
        name = png.stem
        caption, title = "", name.split("_", 1)[1].replace("_", " ")
        if name in pkg.FIGURES:
            try:
                mod = importlib.import_module(f"toymodel.figures.{name}")
                caption, title = getattr(mod, "CAPTION", ""), getattr(mod, "TITLE", title)
            except ImportError as err:  # a figure whose optional dependency is missing here
                caption = f"(caption unavailable: {err})"
        parts += [f"## Figure {int(name[3:5])} — {title}", "",
                  f"![{html.escape(title)}](img/{png.name})", "", caption,
                  "", f"Script: `figures/{name}.py`; data: `{name}.npz` next to the PNG in the "
                  "output folder.", ""]
    return "\n".join(parts)


def cli_reference() -> str:
    """The ``--help`` of ``toymodel`` and of each subcommand, as Markdown."""
    from toymodel.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "92"
    try:
        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        helps = {a.dest: a.help for a in sub._choices_actions}
        parts = ["```text", parser.format_help().rstrip(), "```", ""]
        for name, p in sub.choices.items():
            parts += [f"## `toymodel {name}`", "", html.escape(helps.get(name) or ""), "",
                      "```text", p.format_help().rstrip(), "```", ""]
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(parts)
