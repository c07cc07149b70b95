"""The documentation site builds offline with every warning an error (``make docs``).

Docstrings are reST: a stray ``|V|`` (a substitution), a misplaced numpydoc section or a
cross-reference to nothing breaks the build, so this test is where such slips surface.
"""

import importlib
import inspect
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

for _module in ("sphinx", "numpydoc", "myst_nb", "furo"):
    pytest.importorskip(_module, reason=f"{_module} is not installed: pip install -e '.[docs]'")
# the rankkit_ext pages import the extension
pytest.importorskip("torch")
pytest.importorskip("transformers")

import rankkit  # noqa: E402
import rankkit_ext  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _title(notebook: Path) -> str:
    """The notebook's first heading, as the page shows it."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    first = next(c for c in cells if c["cell_type"] == "markdown")
    return "".join(first["source"]).splitlines()[0].lstrip("# ").strip()


def _public_objects(package) -> list[str]:
    return [name for name in package.__all__
            if not isinstance(getattr(package, name), type(package))]


# One test, one build: the build is the expensive part (~25 s of CPU), so every check reads the
# same output instead of each test building its own (xdist would run them on both workers).
@pytest.mark.slow
def test_docs_build_with_warnings_as_errors(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-j", "1", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(ROOT / "docs"), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, f"sphinx failed after {seconds:.0f} s:\n{proc.stderr[-6000:]}"

    html = tmp_path / "html"
    # every public function, class and constant of both packages has its entry, so a build
    # that silently documented nothing (an import failure autodoc only warns about) fails here
    for package in (rankkit, rankkit_ext):
        page = (html / "_generated" / "api" / f"{package.__name__}.html").read_text("utf-8")
        missing = [name for name in _public_objects(package)
                   if f'id="{package.__name__}.{name}"' not in page]
        assert not missing, f"{package.__name__} page lacks {missing}"
    core = (html / "_generated" / "api" / "rankkit.html").read_text("utf-8")
    assert 'id="rankkit.estimate_min_rank"' in core and ">Parameters<" in core
    assert 'id="rankkit_ext.compare_rank"' in (
        html / "_generated" / "api" / "rankkit_ext.html").read_text("utf-8")
    # every public module has its page, and every name in any public module's __all__ is
    # documented on some page: under this module's name or under another module that lists
    # the same object (a name is documented once, where first listed, and linked elsewhere)
    from rankkit._modules import public_modules

    modules = public_modules()
    assert {"rankkit.cli", "rankkit.testing", "rankkit.distributed", "rankkit_ext.tsmc",
            "rankkit_ext.testing", "rankkit.figures", "rankkit_ext.tsmc.resampling"} <= set(modules)
    api = html / "_generated" / "api"
    ids = set()
    for name in modules:
        page = api / f"{name}.html"
        assert page.is_file(), f"public module {name} has no API page"
        text = page.read_text("utf-8")
        assert f'id="module-{name}"' in text
        ids |= set(re.findall(r'id="([A-Za-z_][\w.]*)"', text))
    where: dict[int, set[str]] = {}
    for name in modules:
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", []):
            where.setdefault(id(getattr(module, attr)), set()).add(f"{name}.{attr}")
    undocumented = sorted(f"{name}.{attr}" for name in modules
                          for attr in getattr(importlib.import_module(name), "__all__", [])
                          if not inspect.ismodule(getattr(importlib.import_module(name), attr))
                          and not where[id(getattr(importlib.import_module(name), attr))] & ids)
    assert not undocumented, f"public names with no entry in the API reference: {undocumented}"
    for must in ("rankkit_ext.training.evaluate", "rankkit_ext.tsmc.resampling.conditional_resample"):
        module, _, attr = must.rpartition(".")
        assert where[id(getattr(importlib.import_module(module), attr))] & ids, must

    # the user guide is on the site, with the sections a newcomer needs
    guide = (html / "guide.html").read_text("utf-8")
    for section in ("Install", "The one-liner", "Reading the two brackets", "The scale of a certificate",
                    "Labels and ε", "The extension: train, guide, compare"):
        assert f">{section}<" in guide, f"the user guide lacks its section {section!r}"

    # MathJax is served from the site itself: formulas render offline
    page = (api / "rankkit.minrank.html").read_text("utf-8")
    scripts = re.findall(r'<script[^>]*src="([^"]*mathjax[^"]*)"', page, flags=re.I)
    assert scripts and not any(s.startswith(("http:", "https:", "//")) for s in scripts), scripts
    assert all((api / s.split("?")[0]).resolve().is_file() for s in scripts), scripts

    # the command-line page: every visible option of every subcommand, as built
    cli_page = (html / "_generated" / "cli.html").read_text("utf-8")
    missing = [(cmd, opt) for cmd, opt in _cli_options() if opt not in cli_page]
    assert not missing, f"the command-line page lacks {missing}"

    notebooks = sorted((ROOT / "examples").glob("*.ipynb"))
    assert len(notebooks) == 2
    for notebook in notebooks:
        page = html / "_generated" / "examples" / f"{notebook.stem}.html"
        assert page.is_file(), f"{notebook.name} was not rendered"
        assert _title(notebook) in page.read_text("utf-8")


def _cli_options() -> list[tuple[str, str]]:
    """(subcommand, option spelling) for every visible option of the ``rankkit`` command."""
    import click

    from rankkit.cli import main

    out = []
    for name, cmd in main.commands.items():
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                out += [(name, o) for o in [*p.opts, *p.secondary_opts]]
    return out


def test_cli_page_lists_every_option_of_every_subcommand():
    """docs/cli_reference.py renders each subcommand's section with all its visible options
    (and their help); hidden old spellings stay off the page."""
    import importlib.util

    import click

    # loaded by file, not through sys.path (tests never edit it: test_figures.test_arrows_point_down)
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "docs" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    render = module.render

    from rankkit.cli import main

    page = render()
    sections = page.split("\nrankkit ")[1:]
    by_name = {sec.split("\n", 1)[0]: sec for sec in sections}
    assert sorted(by_name) == sorted(main.commands)
    for name, cmd in main.commands.items():
        for p in cmd.params:
            if not isinstance(p, click.Option):
                continue
            for opt in [*p.opts, *p.secondary_opts]:
                shown = f"``{opt}``" in by_name[name]
                assert shown != p.hidden, (name, opt, "hidden" if p.hidden else "missing")
            if not p.hidden:
                assert " ".join(p.help.split())[:30].replace("*", "\\*") in by_name[name]
