"""Sphinx configuration for rankkit's documentation site.

Built offline with warnings as errors by ``make docs`` and by tests/test_docs.py. The API
reference is generated at build time from each package's ``__all__`` (so a new public name
appears without editing a page), the command-line page from the click options
(docs/cli_reference.py), and the two notebooks are copied from ``examples/`` (the one
source: tests/test_examples.py executes them; here they are rendered as stored, never run).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import warnings
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# Document the tree these docs belong to, not whatever rankkit an editable install points at.
sys.path.insert(0, str(ROOT))

from rankkit._io import atomic_write  # noqa: E402  (needs the sys.path entry above)
from rankkit._modules import public_modules  # noqa: E402

GENERATED = DOCS / "_generated"
# numpydoc reports a section heading it does not know (whose text it then drops) as a Python
# warning, which -W does not see; it fails the build like every other docstring problem.
warnings.filterwarnings("error", category=UserWarning, module=r"numpydoc(\..*)?")

project = "rankkit"
author = "rankkit developers"
copyright = "rankkit developers"
release = version = importlib.import_module("rankkit").__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    # MathJax 3 copied into _static: formulas render with no network (a CDN by default)
    "sphinx-mathjax-offline",
    "numpydoc",
    "myst_nb",
]
# No sphinx.ext.intersphinx: the build must not touch the network.

exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "furo"
html_title = f"rankkit {release}"

# The autosummary tables link to the objects on the same page; no stub pages.
autosummary_generate = False
# Type hints stay in the numpydoc Parameters sections; in signatures they repeat them at length.
autodoc_typehints = "none"
autodoc_member_order = "bysource"
# An override without a docstring of its own (forward, train of a torch.nn.Module) would show
# torch's text, which describes torch, not the override; :members: then leaves it out.
autodoc_inherit_docstrings = False
# Classes list their members through autodoc (:members:); numpydoc's own member tables
# would describe each method a second time.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

# Every cross-reference must resolve (a dead link is a docstring bug), except two kinds that
# are plain text on purpose:
nitpicky = True
nitpick_ignore_regex = [
    # third-party objects (types in signatures, base classes, "see also"): without
    # intersphinx, which needs the network, there is nothing to link them to;
    ("py:.*", r"(builtins|collections|json|typing|numpy|np|scipy|sklearn|torch|transformers|"
              r"datasets|pandas|pyarrow|click|numba|cupy)(\..*)?"),
    # private helpers and modules named for developers (rankkit._kernels, _inverse_cdf):
    # not part of the documented API, so there is no page to link to.
    ("py:.*", r"(.*\.)?_[A-Za-z].*"),
]

# Render the notebooks as stored; tests/test_examples.py is where they run.
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath"]

# (package or module, title): the pages of the API reference, in order. A name is documented
# on the first page whose __all__ holds that object; later pages link to it.
API = [
    ("rankkit", "rankkit: the core"),
    ("rankkit.datasets", "rankkit.datasets: loading labelled text"),
    ("rankkit.synthetic", "rankkit.synthetic: patterns with known minimal rank"),
    ("rankkit.tokenizers", "rankkit.tokenizers"),
    ("rankkit.rank", "rankkit.rank: numerical rank"),
    ("rankkit.bounds", "rankkit.bounds: lower bounds on the exact and the ε minimal rank"),
    ("rankkit.omega", "rankkit.omega: the Ω₂ reduction and the way back to Ω"),
    ("rankkit.lowrank", "rankkit.lowrank: fixed-rank completion"),
    ("rankkit.softimpute", "rankkit.softimpute: soft-impute ALS"),
    ("rankkit.exact", "rankkit.exact: exact completion"),
    ("rankkit.minrank", "rankkit.minrank: the minimal-rank certificate"),
    ("rankkit.distributed", "rankkit.distributed: sharded matrices and solvers"),
    ("rankkit.testing.bounds", "rankkit.testing.bounds: re-checking the bounds"),
    ("rankkit_ext", "rankkit_ext: the torch + transformers extension"),
    ("rankkit_ext.models", "rankkit_ext.models: RAD-V and RAD-Q"),
    ("rankkit_ext.training", "rankkit_ext.training"),
    ("rankkit_ext.learned", "rankkit_ext.learned: learned matrices"),
    ("rankkit_ext.compare", "rankkit_ext.compare"),
    ("rankkit_ext.lm", "rankkit_ext.lm: base language models"),
    ("rankkit_ext.guided", "rankkit_ext.guided: reward-guided decoding"),
    ("rankkit_ext.scorers", "rankkit_ext.scorers: text scorers"),
    ("rankkit_ext.metrics", "rankkit_ext.metrics: evaluation metrics"),
    ("rankkit_ext.report", "rankkit_ext.report: tables and plots"),
    ("rankkit_ext.tsmc", "rankkit_ext.tsmc: twisted sequential Monte Carlo"),
]


# The curated pages first, then a page for every other public module (named by its path and
# its docstring's first line), so that no public module or name goes undocumented.
_CURATED = {name for name, _ in API}


def _title(name: str) -> str:
    """``name: first line of its docstring`` without a trailing period or "(issue N)"."""
    doc = (importlib.import_module(name).__doc__ or "").strip()
    first = re.sub(r"\s*\(([^()]*;\s*)?issues? [0-9, ]+\)", "", doc.splitlines()[0] if doc else "")
    first = first.rstrip(" .")
    return f"{name}: {first}" if first else name


API += [(name, _title(name)) for name in public_modules() if name not in _CURATED]
NOTEBOOKS = ["01_core_min_rank.ipynb", "02_extension_guided_decoding.ipynb"]


def _write_if_changed(path: Path, text: str) -> None:
    # Unchanged sources keep their mtime, so an incremental build re-reads nothing; atomic so
    # that a build running beside this one (make docs and the test) never reads half a file.
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    atomic_write(path, "w", lambda f: f.write(text))


_DOCUMENTED: dict[int, str] = {}  # id(function or class) -> the name it is documented under


def _directive(name: str, obj: object) -> list[str]:
    """The autodoc directive for one public name."""
    if inspect.isclass(obj):
        return [f".. autoclass:: {name}", "   :members:", "   :show-inheritance:"]
    if inspect.isroutine(obj):
        return [f".. autofunction:: {name}"]
    # A value can be a long table (rankkit.datasets.PRESETS) or machine-dependent (HAS_CUDA).
    return [f".. autodata:: {name}", "   :no-value:"]


def _api_pages() -> list[str]:
    """Write one page per entry of ``API`` and return their document names.

    One page per module with every object on it, not one page per object: the theme renders
    the whole navigation tree into every page, so ~180 object pages cost minutes to write.
    """
    documented = _DOCUMENTED
    pages = []
    for modname, title in API:
        module = importlib.import_module(modname)
        own, elsewhere = [], []
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                continue  # a submodule has its own page
            # Only functions and classes are deduplicated by identity: two modules' constants
            # can be the same interned object (True, a short tuple) without being one name.
            if callable(obj) and id(obj) in documented:
                elsewhere.append(documented[id(obj)])
                continue
            if callable(obj):
                documented[id(obj)] = f"{modname}.{name}"
            own.append((name, obj))
        lines = [".. generated by docs/conf.py from __all__: edit conf.py or the module, "
                 "not this file", "", title, "=" * len(title), "",
                 f".. automodule:: {modname}", "   :no-members:", "",
                 f".. currentmodule:: {modname}", ""]
        if own:
            lines += [".. autosummary::", "   :nosignatures:", ""]
            lines += [f"   {name}" for name, _ in own] + [""]
        if elsewhere:
            links = ", ".join(f":obj:`{full}`" for full in elsewhere)
            lines += [f"Also in ``{modname}.__all__``, documented where first listed: {links}.",
                      ""]
        for name, obj in own:
            lines += _directive(name, obj) + [""]
        _write_if_changed(GENERATED / "api" / f"{modname}.rst", "\n".join(lines))
        pages.append(f"_generated/api/{modname}")
    return pages


def _notebooks() -> list[str]:
    """Copy the example notebooks in (a toctree only reaches files under this folder)."""
    pages = []
    for name in NOTEBOOKS:
        source = ROOT / "examples" / name
        if not source.is_file():
            raise FileNotFoundError(f"docs/conf.py NOTEBOOKS lists {name!r} but {source} does "
                                    "not exist; update NOTEBOOKS to the notebooks in examples/")
        _write_if_changed(GENERATED / "examples" / name, source.read_text(encoding="utf-8"))
        pages.append(f"_generated/examples/{Path(name).stem}")
    return pages


def _toctree(caption: str, pages: list[str]) -> str:
    return "\n".join([".. toctree::", f"   :caption: {caption}", "   :maxdepth: 1", ""]
                     + [f"   {page}" for page in pages]) + "\n"


_write_if_changed(GENERATED / "api.rst", "API reference\n=============\n\n"
                  + _toctree("Modules", [f"/{p}" for p in _api_pages()]))
_write_if_changed(GENERATED / "examples.rst", "Examples\n========\n\n"
                  + _toctree("Notebooks", [f"/{p}" for p in _notebooks()]))
# the command-line reference, from the click options themselves (docs/cli_reference.py)
sys.path.insert(0, str(DOCS))
from cli_reference import render as _render_cli  # noqa: E402

_write_if_changed(GENERATED / "cli.rst", _render_cli())


def _lookup(dotted: str) -> object | None:
    """The object ``dotted`` names, importing its module: ``None`` if it names nothing."""
    parts = dotted.split(".")
    if parts[0] not in ("rankkit", "rankkit_ext"):
        return None  # never import a third-party module on a reference's say-so
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        return obj
    return None


def _documented_names(dotted: str) -> list[str]:
    """Names under which the object that ``dotted`` names is documented, best first."""
    obj = _lookup(dotted)
    if obj is None:
        return []
    if inspect.ismodule(obj):
        # a submodule without a page (rankkit_ext.tsmc.engine): its names are on the page of
        # the nearest documented package
        pages = {modname for modname, _ in API}
        name = obj.__name__
        while name and name not in pages:
            name = name.rpartition(".")[0]
        return [name] if name else []
    paths = [dotted]
    if hasattr(obj, "__qualname__") and hasattr(obj, "__module__"):
        paths.append(f"{obj.__module__}.{obj.__qualname__}")  # an inherited method: its class
    found = []
    for path in paths:
        parts = path.split(".")
        for cut in range(len(parts), 0, -1):  # the longest documented prefix, then the rest
            prefix = _lookup(".".join(parts[:cut]))
            if prefix is not None and callable(prefix) and id(prefix) in _DOCUMENTED:
                found.append(".".join([_DOCUMENTED[id(prefix)], *parts[cut:]]))
                break
    return found


def _context_modules(node) -> list[str]:
    # Where the reference was written: the page's current module, and the module that defines
    # the documented object (a docstring names things as its own module's namespace has them).
    contexts = [node.get("py:module")]
    written_in = re.search(r"docstring of ([\w.]+)", node.source or "")
    if written_in:
        parts = written_in.group(1).split(".")
        for cut in range(len(parts), 0, -1):
            if inspect.ismodule(_lookup(".".join(parts[:cut]))):
                contexts.append(".".join(parts[:cut]))
                break
    return [c for c in contexts if c]


def _resolve_alias(app, env, node, contnode):
    """Link a Python reference to where its object is documented under another name.

    ``:func:`rankkit.lowrank.fixed_rank_fit``` and ``:func:`fixed_rank_fit``` written in
    ``rankkit.lowrank`` name the object documented as ``rankkit.fixed_rank_fit``; Sphinx
    knows only the documented name, so it looks the reference up the way Python would.
    """
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    domain = env.get_domain("py")
    candidates = [f"{context}.{target}" for context in _context_modules(node)] + [target]
    for dotted in candidates:
        for name in _documented_names(dotted):
            for reftype in (node["reftype"], "obj"):
                resolved = domain.resolve_xref(env, node.get("refdoc"), app.builder, reftype,
                                               name, node, contnode)
                if resolved is not None:
                    return resolved
    return None


def setup(app):
    app.connect("missing-reference", _resolve_alias)
