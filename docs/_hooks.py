"""MkDocs hooks of the toymodel site (registered in ``docs/mkdocs.yml``).

* ``on_config``: serve the pages from ``docs/`` itself. MkDocs' validation refuses a ``docs_dir``
  equal to the folder of the config file, so the config names a subfolder and this hook points
  ``docs_dir`` back at ``docs/`` once validation is over.
* ``on_page_markdown``: expand ``<!-- cli-reference -->`` into the help of every ``toymodel``
  subcommand, generated from the argparse parser (so the reference never drifts from the code),
  and ``<!-- api: mod1 mod2 ... -->`` into mkdocstrings ``::: mod`` blocks for the modules that
  exist at build time (the others are listed in a note).
  ``<!-- gallery -->`` becomes one section per figure image under ``docs/img/`` with the caption
  its script defines (``CAPTION``), so captions and images come from the same place.
* ``on_page_content``: render the reST roles the docstrings use (``:math:``, ``:func:``, ...) that
  mkdocstrings leaves as plain text: math goes to MathJax (arithmatex markup), cross references
  become code, linked when the target is documented on the same page.
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
_MATH_ROLE = re.compile(r":math:<code>(.*?)</code>", re.S)
_MATH_BLOCK = re.compile(r"<p>\.\. math::\s*(.*?)</p>", re.S)
_XREF = re.compile(r":(?:func|class|mod|meth|data|attr|exc|obj):<code>~?([\w.]+)</code>")
_IDS = re.compile(r'id="([\w.]+)"')


def on_config(config, **kwargs):
    config["docs_dir"] = os.path.dirname(os.path.abspath(config.config_file_path))
    return config


def on_page_markdown(markdown, page, config, files, **kwargs):
    if _CLI in markdown:
        markdown = markdown.replace(_CLI, cli_reference())
    if _GALLERY in markdown:
        markdown = markdown.replace(_GALLERY, gallery(config["docs_dir"]))
    return _API.sub(lambda m: api_blocks(m.group(1).split()), markdown)


def on_page_content(html_text, page, config, files, **kwargs):
    if ":math:" not in html_text and ":func:" not in html_text and ".. math::" not in html_text:
        return html_text
    ids = set(_IDS.findall(html_text))
    html_text = _MATH_ROLE.sub(lambda m: f'<span class="arithmatex">\\({m.group(1)}\\)</span>',
                               html_text)
    html_text = _MATH_BLOCK.sub(lambda m: f'<div class="arithmatex">\\[{m.group(1)}\\]</div>',
                                html_text)

    def xref(m):
        name = m.group(1)
        if name in ids:
            return f'<a href="#{name}"><code>{name}</code></a>'
        return f"<code>{name}</code>"

    return _XREF.sub(xref, html_text)


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
