"""The figure registry and its runner: ``rankkit figures`` regenerates ``paper_figures/``.

Every analysis is a script ``analyses/<name>.py`` of the source checkout (one per paper
figure or table) that accepts ``--out DIR`` and ``--quick`` and writes
``DIR/<name>.png`` + ``DIR/<name>.json`` (a script may draw several figures). The package
never imports them (arrows point down: ``analyses/`` uses the package, not the reverse).
:func:`run` finds the ``analyses/`` folder and runs each analysis in its own process,

    python -m analyses.<name> --out DIR [--quick]

with the working directory set to the folder's parent, so the scripts import ``analyses``
and the checkout's ``rankkit`` without any ``sys.path`` edits; a separate process per
analysis also keeps one analysis's torch threads, matplotlib state and memory out of the
next. Add an analysis by adding its name to :data:`ANALYSES`.
"""

from __future__ import annotations

import codecs
import collections
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ANALYSES", "AnalysisError", "find_analyses", "run"]

#: The analyses in the order ``rankkit figures`` runs them: the core ones (numpy / scipy)
#: first, then those that need the torch extension (reward models, guided decoding, TSMC).
ANALYSES: tuple[str, ...] = (
    "data_rank_structure",
    "stress_upper_triangular",
    "table2_min_rank",
    "min_rank_frontier",
    "min_rank_brackets",
    # rankkit_ext (torch): reward models, guided decoding, twisted SMC
    "expressivity_upper_triangular",
    "learned_rank",
    "learned_rank_regularizer",
    "guided_tradeoff",
    "tsmc_toxic_story",
)

#: How much of a failing analysis's stderr the error message quotes.
_TAIL_CHARS = 4000


class AnalysisError(RuntimeError):
    """An analysis exited with a non-zero status; ``name``, ``returncode``, ``stderr_tail``."""

    def __init__(self, name: str, returncode: int, command: str, cwd: Path, stderr_tail: str):
        self.name, self.returncode, self.stderr_tail = name, returncode, stderr_tail
        super().__init__(f"analysis {name!r} failed with exit status {returncode} "
                         f"(`{command}` in {cwd}); the end of its stderr:\n{stderr_tail.rstrip()}")


def _candidates() -> list[Path]:
    """Folders that may hold ``analyses/``: the current directory, then the source checkout
    this package sits in (``<checkout>/rankkit/figures.py``; absent for a wheel install)."""
    here = Path.cwd().resolve()
    checkout = Path(__file__).resolve().parents[1]
    return [here] if checkout == here else [here, checkout]


def find_analyses(names: Sequence[str] = ANALYSES) -> Path:
    """The ``analyses/`` folder holding the scripts ``names``.

    Looks in the current directory, then in the source checkout next to the installed
    package. A folder counts only when it is the package ``analyses`` (has ``__init__.py``)
    and has every requested script, so an unrelated ``analyses/`` folder in the current
    directory is passed over rather than run.

    Raises
    ------
    FileNotFoundError
        Neither place has them; the message names every path looked at.
    """
    looked = []
    for root in _candidates():
        folder = root / "analyses"
        need = [folder / "__init__.py", *(folder / f"{n}.py" for n in names)]
        missing = [p for p in need if not p.is_file()]
        if not missing:
            return folder
        looked.append(f"{folder} (no {', '.join(p.name for p in missing[:3])}"
                      f"{' …' if len(missing) > 3 else ''})")
    raise FileNotFoundError(
        "the analysis scripts were not found; looked in " + "; ".join(looked) + ". They ship "
        "with the rankkit source checkout, not the wheel: run `rankkit figures` from the "
        "checkout (the folder holding analyses/ and rankkit/), or install it with "
        "`pip install -e <checkout>`")


def _pump(src, sinks, tail: collections.deque | None) -> None:
    """Copy a child's output to ``sinks`` (the caller's streams) as it comes, so progress
    bars stay live, keeping the last characters in ``tail``."""
    # incremental: a chunk boundary may fall inside a multi-byte character ("Ω", "…")
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while chunk := src.read1(8192):
        text = decoder.decode(chunk)
        for s in sinks:
            s.write(text)
            s.flush()
        if tail is not None:
            tail.extend(text)
    src.close()


def _stamps(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}


def run(only: Sequence[str] | None = None, quick: bool = False,
        out_dir: str | os.PathLike = "paper_figures", *, stdout=None,
        python: str = sys.executable, progress: bool = True) -> dict[str, list[str]]:
    """Run the analyses (all of :data:`ANALYSES`, or those named in ``only``) and return the
    files each one wrote.

    Parameters
    ----------
    only : sequence of str, optional
        Short names from :data:`ANALYSES`; ``None`` runs all of them, in registry order.
    quick : bool
        Pass ``--quick`` (small settings: a smoke run of the same pipeline).
    out_dir : path
        Output folder, relative to the current directory (not to the checkout).
    stdout : text stream, optional
        Where the analyses' standard output goes (default ``sys.stdout``; the CLI's
        ``--json`` passes ``sys.stderr`` so its own stdout carries JSON only). Their
        standard error always goes to ``sys.stderr``.
    python : str
        The interpreter that runs them (this one by default).
    progress : bool
        False runs them with ``TQDM_DISABLE=1`` in their environment (tqdm ≥ 4.66 reads it):
        no progress bars (``rankkit figures --no-progress``).

    Returns
    -------
    dict
        ``{name: [path, …]}``: every file under ``out_dir`` the analysis (re)wrote.

    Raises
    ------
    ValueError
        An unknown name in ``only`` (the message lists :data:`ANALYSES`).
    FileNotFoundError
        No ``analyses/`` folder found (see :func:`find_analyses`).
    AnalysisError
        An analysis exited with a non-zero status (its status and the end of its stderr);
        the analyses after it are not run.
    """
    unknown = sorted(set(only or ()) - set(ANALYSES))
    if unknown:
        raise ValueError(f"unknown analysis {unknown}; available: {list(ANALYSES)}")
    names = [n for n in ANALYSES if not only or n in only]
    folder = find_analyses(names)
    out_dir = Path(out_dir).resolve()  # the child runs in the checkout, not in our cwd
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[str]] = {}
    env = None if progress else {**os.environ, "TQDM_DISABLE": "1"}
    for name in names:
        argv = [python, "-m", f"analyses.{name}", "--out", str(out_dir)] + (
            ["--quick"] if quick else [])
        t0, before = time.perf_counter(), _stamps(out_dir)
        print(f"[figures] {name} …", file=sys.stderr, flush=True)
        proc = subprocess.Popen(argv, cwd=folder.parent, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        tail: collections.deque = collections.deque(maxlen=_TAIL_CHARS)
        pumps = [threading.Thread(target=_pump, args=(proc.stdout, [stdout or sys.stdout], None)),
                 threading.Thread(target=_pump, args=(proc.stderr, [sys.stderr], tail))]
        for t in pumps:
            t.start()
        try:
            rc = proc.wait()
        except BaseException:  # Ctrl-C: do not leave the analysis running on its own
            proc.kill()
            proc.wait()
            raise
        finally:
            for t in pumps:
                t.join()
        if rc != 0:
            raise AnalysisError(name, rc, " ".join(["python"] + argv[1:]), folder.parent,
                                "".join(tail))
        # every file the analysis (re)wrote, whatever its name (one script may draw several
        # figures): new, or with another modification time than before it ran
        written[name] = sorted(p for p, t in _stamps(out_dir).items() if before.get(p) != t)
        print(f"[figures] {name} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return written
