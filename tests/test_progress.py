"""One progress-bar convention (issue 25 item 3): True shows, False hides, None shows only on
an interactive terminal or in a notebook that can draw widgets."""

import io
import re
import subprocess
import sys

import pytest

import rankkit as rk
from rankkit import _progress


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.mark.parametrize("tty", [True, False])
def test_auto_follows_whether_stderr_is_a_terminal(monkeypatch, tty):
    monkeypatch.setattr(sys, "stderr", _Stream(tty))
    assert _progress.show_progress(None) is tty
    assert _progress.show_progress(True) is True and _progress.show_progress(False) is False


def test_progress_must_be_a_bool_or_none():
    with pytest.raises(TypeError, match="progress must be True, False or None"):
        _progress.show_progress("yes")


def test_a_notebook_without_widgets_gets_no_widget_bar(monkeypatch):
    monkeypatch.setattr(_progress, "_in_notebook", lambda: True)
    monkeypatch.setattr(_progress, "_has_widgets", lambda: False)
    from tqdm.std import tqdm

    bar = _progress.progress_bar(total=3, progress=True, file=io.StringIO())
    assert type(bar) is tqdm  # the text bar, not tqdm.notebook's (which warns "IProgress not found")
    bar.close()
    assert _progress.show_progress(None) is False


def test_the_search_bar_counts_ranks(capsys):
    rk.estimate_min_rank(rk.synthetic.upper_triangular(5), progress=True, backend="numpy")
    err = capsys.readouterr().err
    assert re.search(r"\d+ ranks", err), err[-500:]
    assert not re.search(r"\drank", err)


def test_a_script_with_redirected_stderr_gets_no_bars():
    """The default (None) in a script whose stderr is a pipe: nothing but what the script prints."""
    code = ("import rankkit as rk\n"
            "est = rk.estimate_min_rank(rk.synthetic.upper_triangular(6), backend='numpy')\n"
            "print(est.upper)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    ref = rk.estimate_min_rank(rk.synthetic.upper_triangular(6), backend="numpy", progress=False)
    assert out.stdout.strip() == str(ref.upper)
    assert "\r" not in out.stderr and "\x1b[" not in out.stderr and "it/s" not in out.stderr, out.stderr
