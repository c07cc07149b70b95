"""One convention for every progress bar of rankkit and rankkit_ext.

``progress=True`` shows a bar, ``False`` hides it, and ``None`` (the default of every public
function) shows it only where a person watches: an interactive terminal, or a Jupyter kernel
that can draw widgets. A script whose stderr goes to a file or a pipe therefore gets no bars,
and in particular none of the cursor-movement codes that nested bars (a rank search's bar
with a bar per fit inside it) write. In a notebook without ``ipywidgets`` the plain text bar
is used instead of ``tqdm.auto``'s widget, which would only warn ("IProgress not found").
"""

from __future__ import annotations

import sys


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    try:
        ip = shell.get_ipython() if shell is not None else None
    except Exception:  # an IPython that cannot say is not a notebook we can draw in
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def _has_widgets() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def show_progress(progress: bool | None) -> bool:
    """Whether to draw a bar: ``progress`` itself when it is a bool; for None, whether stderr
    is an interactive terminal or a notebook able to draw widgets."""
    if progress is not None:
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be True, False or None (auto), got {progress!r}")
        return progress
    if _in_notebook():
        return _has_widgets()
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def progress_bar(iterable=None, *, progress: bool | None = None, **kw):
    """A tqdm bar under the convention above (``kw`` as for ``tqdm``): the widget bar in a
    notebook with ipywidgets, the text bar everywhere else; disabled unless shown."""
    if _in_notebook() and _has_widgets():
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(iterable, disable=not show_progress(progress), **kw)
