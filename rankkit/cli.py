"""The ``rankkit`` command: reward-matrix sizes, min-rank certificates, rank curves, figures.

Every subcommand has ``--help``, ``--json`` (machine-readable output), ``-o/--output FILE``
(the result goes to FILE instead of stdout, as JSON with ``--json`` or a ``.json`` name, as
text otherwise; ``figures`` takes ``-o/--out-dir DIR``), ``-q/--quiet`` (the result only: no
progress bars, timings or "written to" notes) and ``--no-progress`` (no progress bars;
they go to stderr). Datasets are anything :func:`rankkit.datasets.load` accepts:
``rankkit datasets`` lists the presets. ``--label-columns`` picks the columns a dataset's
labels are read from; ``--label`` picks the one label a command analyses.

The module imports only click and numpy: torch, transformers, numba and matplotlib load when
a subcommand needs them, so ``rankkit --help`` starts in well under a second.

Examples
--------
::

    rankkit matrix vader:movie
    rankkit estimate vader:movie                                   # tightest certified bound
    rankkit estimate vader:movie --method soft-impute --ranks 0,255,511,767   # Table 2
    rankkit estimate reviews.csv --text review --label-columns score --limit 2000 -o est.json
    rankkit stress --case upper_triangular --n 64
    rankkit figures --quick
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from pathlib import Path

import click
import numpy as np

from ._io import json_default

__all__ = ["json_default", "main", "matrix_stats"]


class _Report:
    """Where a command's result goes: stdout, or the ``-o/--output`` file (written atomically
    once the command has succeeded, so a failed run never leaves half a result). Notes
    (timings, "written to") go to stderr and are dropped by ``-q/--quiet``."""

    def __init__(self, output: str | None, quiet: bool, as_json: bool):
        self.path = None if output is None else Path(output)
        self.quiet = quiet
        self.as_json = as_json or (self.path is not None and self.path.suffix == ".json")
        self._lines: list[str] = []

    def echo(self, text: str = "") -> None:
        if self.path is None:
            click.echo(text)
        else:
            self._lines.append(text)

    def json(self, obj) -> None:
        self.echo(json.dumps(obj, indent=2, default=json_default))

    def note(self, text: str) -> None:
        if not self.quiet:
            click.echo(text, err=True)

    def close(self) -> None:
        if self.path is None:
            return
        from ._io import atomic_write

        if self.path.parent != Path(""):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "\n".join(self._lines) + "\n"
        atomic_write(self.path, "w", lambda f: f.write(text))
        self.note(f"result written to {self.path}")


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=json_default))


def output_options(f):
    """``-o/--output``, ``-q/--quiet`` and ``--progress/--no-progress``, shared by every subcommand."""
    opts = [
        click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
                     help="Write the result to this file instead of stdout: JSON with --json "
                          "or a .json name, else the text report."),
        click.option("-q", "--quiet", is_flag=True,
                     help="Print the result only: no progress bars, timings or notes."),
        click.option("--progress/--no-progress", "progress_opt", default=None,
                     help="Progress bars on stderr: always / never; by default only when stderr is "
                          "an interactive terminal (a redirected log gets none). The output is unchanged."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _label_columns(value: str | None) -> list[str] | None:
    """``--label-columns`` (or its old spelling ``--labels``) as a list of column names."""
    alias = click.get_current_context().meta.get("rankkit.labels_alias")
    if value is not None and alias is not None and alias != value:
        raise click.BadParameter(f"--labels {alias!r} (the old spelling of --label-columns) and "
                                 f"--label-columns {value!r} disagree; give one",
                                 param_hint="--label-columns")
    value = value if value is not None else alias
    return None if value is None else [c.strip() for c in value.split(",")]


def _keep_labels_alias(ctx, param, value):
    if value is not None:
        ctx.meta["rankkit.labels_alias"] = value
    return value


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", Path(spec).stem if Path(spec).suffix else spec).strip("_")


def _ranks(value: str | None):
    if value is None or value == "auto":
        return "auto"
    try:
        out = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 0,255,511,767 or "
                                 f"'auto', got {value!r}", param_hint="--ranks") from None
    if not out or min(out) < 0:
        raise click.BadParameter(f"ranks must be >= 0, got {value!r}", param_hint="--ranks")
    return out


def dataset_options(f):
    """The options every dataset-reading subcommand shares."""
    opts = [
        click.argument("dataset"),
        click.option("--tokenizer", default="gpt2", show_default=True,
                     help="Tokenizer name (hub id or local dir); gpt2 works offline."),
        click.option("--limit", type=click.IntRange(min=1), default=None,
                     help="Use only the first N texts."),
        click.option("--max-len", type=click.IntRange(min=1), default=None,
                     help="Truncate utterances to this many tokens."),
        click.option("--text", "text_col", default=None, help="Text column (files, hub:<id>)."),
        click.option("--label-columns", "label_cols", default=None, metavar="COLS",
                     help="Comma-separated columns to read labels from (files, hub:<id>); for "
                          "presets a subset of their labels. Not --label, which picks the one "
                          "label to analyse."),
        # the old spelling, still read (README and scripts use it), no longer advertised
        click.option("--labels", "labels_alias", default=None, hidden=True, expose_value=False,
                     callback=_keep_labels_alias, help="Old spelling of --label-columns."),
        click.option("--split", default=None, help="Hub split (preset default)."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _load(dataset, tokenizer, limit, max_len, text_col, label_cols, split):
    from . import datasets

    labels = _label_columns(label_cols)
    try:
        return datasets.load(dataset, tokenizer=tokenizer, split=split, limit=limit,
                             max_len=max_len, text=text_col, labels=labels)
    except (KeyError, ValueError, FileNotFoundError, TypeError, OSError) as e:
        msg = str(e.args[0] if e.args else e)
        # the loaders' messages usually name the source already: do not say it twice
        raise click.ClickException(msg if dataset in msg else f"{dataset}: {msg}") from e


def _check_backend(backend, device) -> None:
    """Refuse a backend or device this machine lacks before any data is loaded."""
    from ._backend import resolve_backend

    try:
        resolve_backend(backend, device)
    except (ImportError, RuntimeError, ValueError) as e:
        raise click.BadParameter(str(e), param_hint="--backend / --device") from None


def matrix_stats(R, R2) -> dict:
    """Sizes of Ω and Ω₂ (``R2 = reduce_omega2(R)``), rows / cells by prefix length and a
    cells-per-row histogram, as plain ints (``rankkit matrix`` and analyses/data_rank_structure)."""
    plen = R.row_prefix_len
    plen2 = R2.row_prefix_len
    row_nnz = R.row_nnz
    by_len = {}
    for L in np.unique(plen):
        k = plen == L
        k2 = plen2 == L
        by_len[int(L)] = {"rows": int(k.sum()), "cells": int(row_nnz[k].sum()),
                          "omega2_rows": int(k2.sum()), "omega2_cells": int(R2.row_nnz[k2].sum())}
    edges = [1, 2, 3, 5, 9, 17, 33, 65, 129, 257, 513, 1025, 1 << 62]
    hist = {}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        n = int(((row_nnz >= lo) & (row_nnz < hi)).sum())
        if n:
            hist[f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}" if hi < 1 << 62 else f">={lo}"] = n
    return {
        "omega": {"rows": R.shape[0], "cols": R.shape[1], "observed": R.nnz,
                  "observed_cols": int(np.unique(R.indices).size)},
        "omega2": {"rows": R2.shape[0], "cols": R2.shape[1], "observed": R2.nnz,
                   "single_rows_removed": int(R2.n_single_rows)},
        "by_prefix_length": by_len,
        "cells_per_row_histogram": hist,
        "labels": list(R.label_names),
    }


class FiniteFloat(click.ParamType):
    """A finite float ≥ ``low`` (or > ``low`` with ``strict``), checked when the command line
    is parsed — before any data is loaded."""

    name = "number"

    def __init__(self, low: float = 0.0, strict: bool = False):
        self.low, self.strict = low, strict

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"expected a number, got {value!r}", param, ctx)
        ok = math.isfinite(x) and (x > self.low if self.strict else x >= self.low)
        if not ok:
            rel = ">" if self.strict else ">="
            self.fail(f"must be a finite number {rel} {self.low:g}, got {value!r}", param, ctx)
        return x


# errors a command may raise on bad input: one clean line (a JSON object with --json), never a
# traceback
_USER_ERRORS = (ValueError, TypeError, KeyError, IndexError, OSError, RuntimeError, ImportError,
                MemoryError)


class _Group(click.Group):
    """The ``rankkit`` group: every error is one line on stderr with a non-zero exit, or, when
    ``--json`` is on the command line, a JSON object ``{"error", "type", "exit_code"}`` on
    stdout."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        extra.setdefault("obj", {"argv": argv})  # `estimate --nproc N` relaunches itself with them
        try:
            return super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except (click.ClickException, *_USER_ERRORS) as e:
            if isinstance(e, click.ClickException):
                msg, code = e.format_message(), e.exit_code
                if isinstance(e, click.UsageError) and e.ctx is not None and not isinstance(e, click.BadParameter):
                    msg = f"{msg}\n{e.ctx.get_usage()}"
            else:
                msg, code = (e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)), 1
            if "--json" in argv:
                click.echo(json.dumps({"error": msg, "type": type(e).__name__, "exit_code": code}))
            else:
                click.echo(f"Error: {msg}", err=True)
            sys.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rankkit", message="rankkit %(version)s")
def main():
    """rankkit: how much rank does reward data need (Troshin et al., TMLR)?"""


@main.command("datasets")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@output_options
def datasets_cmd(as_json, output, quiet, progress_opt):
    """List the dataset presets (vader:* work offline; the others need the hub)."""
    from . import datasets

    out = _Report(output, quiet, as_json)
    names = datasets.available()
    if out.as_json:
        out.json(names)
    else:
        for k, v in names.items():
            out.echo(f"{k:<18} {v}")
    out.close()


@main.command("matrix")
@dataset_options
@output_options
def matrix_cmd(dataset, tokenizer, limit, max_len, text_col, label_cols, split, as_json,
               output, quiet, progress_opt):
    """Sizes of P_Ω(R) and Ω₂ (Lemma 3), rows by prefix length, cells per row."""
    from .omega import reduce_omega2
    from .trie import build_reward_matrix

    out = _Report(output, quiet, as_json)
    ds = _load(dataset, tokenizer, limit, max_len, text_col, label_cols, split)
    R = build_reward_matrix(ds, progress=False if (out.as_json or quiet) else progress_opt)
    stats = matrix_stats(R, reduce_omega2(R))
    stats.update(dataset=dataset, tokenizer=str(tokenizer), texts=len(ds),
                 dropped_empty=ds.n_dropped_empty, tokens=int(ds.sequences.tokens.size))
    if out.as_json:
        out.json(stats)
        out.close()
        return
    o, o2 = stats["omega"], stats["omega2"]
    out.echo(f"{dataset} ({tokenizer} tokenizer): {len(ds):,} texts, "
             f"{stats['tokens']:,} tokens, {ds.n_dropped_empty} empty dropped")
    out.echo(f"  P_Ω(R): {o['rows']:,} prefixes × {o['cols']:,} tokens, "
             f"{o['observed']:,} observed cells")
    out.echo(f"  Ω₂    : {o2['rows']:,} × {o2['cols']:,}, {o2['observed']:,} cells "
             f"({o2['single_rows_removed']:,} single-entry rows removed, Lemma 3)")
    out.echo("\n  prefix len |      rows |     cells |  Ω₂ rows |  Ω₂ cells")
    for L, d in stats["by_prefix_length"].items():
        out.echo(f"  {L:>10} | {d['rows']:>9,} | {d['cells']:>9,} | {d['omega2_rows']:>8,} | "
                 f"{d['omega2_cells']:>9,}")
    out.echo("\n  cells per row | rows")
    for k, v in stats["cells_per_row_histogram"].items():
        out.echo(f"  {k:>13} | {v:,}")
    out.close()


def _plot_estimate(est, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    est.plot(ax=ax)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


@main.command("estimate")
@dataset_options
@click.option("--eps", type=FiniteFloat(0.0), default=1e-6, show_default=True,
              help="Tolerance on the MSE over Ω₂.")
@click.option("--method", type=click.Choice(["auto", "soft-impute"]), default="auto", show_default=True,
              help="auto: fixed-rank certificates (the tightest bound); soft-impute: the paper's "
                   "App. C.3 methodology (Table 2: --ranks 0,255,511,767).")
@click.option("--ranks", default="auto", show_default=True,
              help="Comma-separated ranks (Table 2 layout) or 'auto' (up from the proved ε-lower bound, then doubling + bisection).")
@click.option("--lam", type=FiniteFloat(0.0), default=1e-4, show_default=True,
              help="Nuclear-norm weight: soft-impute's λ (App. C.3) and the fixed-rank solver's ρ.")
@click.option("--max-iter", type=click.IntRange(min=1), default=None,
              help="Iterations per fit [1000 for soft-impute, 500 for auto].")
@click.option("--max-abs", type=FiniteFloat(0.0, strict=True), default=None,
              help="Reject certificates with a completed entry larger than this in absolute value.")
@click.option("--normalize", is_flag=True,
              help="Divide the label's values by their largest magnitude first, so that ε is relative "
                   "to the label scale (labels outside [0, 1] otherwise warn: ε is absolute).")
@click.option("--backend", type=click.Choice(["auto", "numpy", "torch", "cupy"]),
              default="auto", show_default=True,
              help="Array backend of the fits: numpy (numba kernels, CPU), torch (CPU or CUDA), "
                   "cupy (CUDA); auto picks torch on a GPU, else numpy.")
@click.option("--device", default=None, help="e.g. cuda:0 for the torch backend.")
@click.option("--label", default="0", show_default=True,
              help="The one label to analyse: a name among the labels read (see "
                   "--label-columns) or its index.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the starts of the fits (spectral start vectors, random restarts).")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), default=None,
              help="Save each finished fit; a rerun resumes from it.")
@click.option("--figure", type=click.Path(dir_okay=False), default=None,
              help="Where to write the MSE-vs-rank figure [rankkit_out/estimate_<dataset>.png].")
@click.option("--no-figure", is_flag=True, help="Do not write a figure.")
@click.option("--no-lower-bound", is_flag=True,
              help="Skip the lower-bound searches (exact: Lemma 2 triangles and full-rank blocks; "
                   "ε: Eckart–Young blocks); the lower ends then come from the observed values only.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes on this host: relaunches the command under torchrun "
                   "(rankkit.distributed: sharded build, soft-impute and fixed-rank fits, gloo or NCCL).")
@output_options
def estimate_cmd(dataset, tokenizer, limit, max_len, text_col, label_cols, split, as_json,
                 eps, method, ranks, lam, max_iter, max_abs, normalize, backend, device, label, seed,
                 checkpoint_dir, figure, no_figure, no_lower_bound, nproc, output, quiet,
                 progress_opt):
    """Bound the minimal rank of P_Ω(R): the exact bracket, the ε-bracket, and every fit."""
    from .minrank import estimate_min_rank
    from .trie import build_reward_matrix

    t0 = time.perf_counter()
    _check_backend(backend, device)
    rank_list = _ranks(ranks)
    world = int(os.environ.get("WORLD_SIZE") or 1)
    if nproc > 1 and world == 1:
        ctx = click.get_current_context()
        argv = (ctx.obj or {}).get("argv", sys.argv[1:])
        sys.exit(launch(argv, nproc))
    out = _Report(output, quiet, as_json)
    # None: bars only where a person watches (an interactive terminal), never in a redirected log
    progress = False if quiet else progress_opt
    if world > 1:
        return _estimate_distributed(dataset, tokenizer, limit, max_len, text_col, label_cols, split,
                                     out, eps, method, rank_list, lam, max_iter, max_abs, backend,
                                     device, label, seed, checkpoint_dir, figure, no_figure,
                                     no_lower_bound, t0, progress, normalize)
    ds = _load(dataset, tokenizer, limit, max_len, text_col, label_cols, split)
    label = int(label) if label.lstrip("-").isdigit() else label
    try:
        # by name from here on: the header and est.summary() then name the label alike
        label_name = ds.label_names[ds.label_index(label)]
    except (KeyError, IndexError) as e:
        raise click.BadParameter(str(e.args[0]), param_hint="--label") from None
    R = build_reward_matrix(ds, progress=False if out.as_json else progress)
    est = estimate_min_rank(R, eps=eps, method=method, label=label_name, ranks=rank_list, lam=lam,
                            max_iter=max_iter, max_abs=max_abs, backend=backend, device=device,
                            seed=seed, progress=progress, checkpoint_dir=checkpoint_dir,
                            lower_bound=not no_lower_bound, normalize=normalize)
    est.meta.update(dataset=dataset, tokenizer=str(tokenizer), texts=len(ds))
    fig_path = None
    if not no_figure:
        fig_path = Path(figure or Path("rankkit_out") / f"estimate_{_slug(dataset)}.png")
        how = (f"soft-impute, λ = {lam:g}, {est.max_iter} iterations" if method == "soft-impute"
               else f"fixed-rank certificates, ρ = {lam:g}")
        _plot_estimate(est, fig_path, f"Completion of Ω₂: {dataset}\nlabel '{label_name}', "
                                      f"{tokenizer} tokenizer, {how}")
    if out.as_json:
        d = est.to_dict()
        d.update(figure=None if fig_path is None else str(fig_path),
                 seconds=round(time.perf_counter() - t0, 2))
        out.json(d)
    else:
        out.echo(f"{dataset}, label {label_name!r}, {tokenizer} tokenizer, {len(ds):,} texts")
        out.echo(est.summary())
        out.note(f"({time.perf_counter() - t0:.1f} s)")
        if fig_path is not None:  # (the JSON names it)
            out.note(f"figure written to {fig_path}")
    out.close()


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def launch(argv: list[str], nproc: int) -> int:
    """Run ``rankkit <argv without --nproc>`` on ``nproc`` processes of this host with
    ``torchrun --standalone`` (``python -m torch.distributed.run``); returns its exit code.
    Each process gets cores / nproc numba and OpenMP threads unless those are set."""
    import subprocess

    env = dict(os.environ)
    threads = str(max(1, (os.cpu_count() or 1) // nproc))
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS"):
        env.setdefault(var, threads)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "rankkit", *_without_nproc(argv)]
    return subprocess.call(cmd, env=env)


def _estimate_distributed(dataset, tokenizer, limit, max_len, text_col, label_cols, split, out, eps,
                          method, rank_list, lam, max_iter, max_abs, backend, device, label, seed,
                          checkpoint_dir, figure, no_figure, no_lower_bound, t0, progress, normalize=False):
    """``rankkit estimate`` on one rank of a torchrun world; rank 0 prints and plots.

    ``checkpoint_dir`` holds one sub-folder per rank (``rank<r>of<P>``), so a rerun on the
    same number of processes resumes every rank's finished fits."""
    from . import distributed

    comm = distributed.get_comm()
    labels = _label_columns(label_cols)
    label = int(label) if label.lstrip("-").isdigit() else label
    auto_kw = {} if max_abs is None else {"max_abs": max_abs}
    est = distributed.estimate_min_rank(
        dataset, eps=eps, comm=comm, method=method, label=label, ranks=rank_list, lam=lam, max_iter=max_iter,
        backend=backend, device=device, seed=seed,
        progress=False if (comm.rank != 0 or out.as_json) else progress, normalize=normalize,
        max_len=max_len,
        lower_bound=not no_lower_bound, tokenizer=tokenizer, text=text_col, labels=labels, split=split,
        limit=limit, checkpoint_dir=checkpoint_dir, **auto_kw)
    if comm.rank != 0:
        return
    est.meta.update(dataset=dataset, tokenizer=str(tokenizer))
    fig_path = None
    if not no_figure:
        fig_path = Path(figure or Path("rankkit_out") / f"estimate_{_slug(dataset)}.png")
        _plot_estimate(est, fig_path, f"Completion of Ω₂: {dataset} ({comm.size} processes)")
    if out.as_json:
        d = est.to_dict()
        d.update(figure=None if fig_path is None else str(fig_path), seconds=round(time.perf_counter() - t0, 2))
        out.json(d)
    else:
        out.echo(f"{dataset}, label {est.label!r}, {tokenizer} tokenizer, {comm.size} processes "
                 f"(rows routed by their first {est.meta.get('route_len', '?')} token(s))")
        out.echo(est.summary())
        out.note(f"({time.perf_counter() - t0:.1f} s)")
        if fig_path is not None:  # (the JSON names it)
            out.note(f"figure written to {fig_path}")
    out.close()


@main.command("rank-curve")
@dataset_options
@click.option("--sizes", default="64,128,256,512,1024", show_default=True,
              help="Comma-separated numbers of sampled rows.")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Independent row samples per size; the curve is their mean.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the row samples.")
@click.option("--label", default="0", show_default=True,
              help="The one label to analyse: a name among the labels read (see "
                   "--label-columns) or its index.")
@click.option("--omega2/--all-rows", default=True, show_default=True,
              help="Sample rows of Ω₂ (≥ 2 observed cells) or of all of P_Ω(R).")
@click.option("--backend", type=click.Choice(["auto", "numpy", "torch", "cupy"]),
              default="auto", show_default=True,
              help="Array backend of the SVDs: numpy, torch (CPU or CUDA) or cupy; auto picks "
                   "torch on a GPU, else numpy.")
@output_options
def rank_curve_cmd(dataset, tokenizer, limit, max_len, text_col, label_cols, split, as_json,
                   sizes, repeats, seed, label, omega2, backend, output, quiet, progress_opt):
    """Numerical rank of sampled rows of the zero-filled P_Ω(R), or of a dense matrix (.npy).

    DATASET may be a ``.npy`` file holding a dense matrix (e.g. a learned reward matrix
    R̂ saved by rankkit_ext); then the rows of that matrix are sampled.
    """
    from .rank import rank_curve

    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {sizes!r}",
                                 param_hint="--sizes") from None
    _check_backend(backend, None)
    out = _Report(output, quiet, as_json)
    progress = False if (out.as_json or quiet) else progress_opt
    if dataset.endswith(".npy"):
        if not Path(dataset).is_file():
            raise click.ClickException(f"{dataset}: no such file")
        M = np.load(dataset, allow_pickle=False)
        what = f"{dataset} ({M.shape[0]:,} × {M.shape[1]:,} dense)"
    else:
        from .omega import reduce_omega2
        from .trie import build_reward_matrix

        ds = _load(dataset, tokenizer, limit, max_len, text_col, label_cols, split)
        R = build_reward_matrix(ds, progress=progress)
        R = reduce_omega2(R) if omega2 else R
        lab = int(label) if label.lstrip("-").isdigit() else label
        M = R.to_scipy(lab)
        what = (f"{dataset} {'Ω₂' if omega2 else 'P_Ω(R)'} zero-filled "
                f"({M.shape[0]:,} × {M.shape[1]:,}), {tokenizer} tokenizer")
    size_list = [s for s in size_list if s <= M.shape[0]] or [M.shape[0]]
    try:
        curve = rank_curve(M, size_list, n_repeats=repeats, seed=seed, backend=backend,
                           progress=progress)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    if out.as_json:
        out.json({"source": what, **curve.to_dict()})
    else:
        out.echo(f"numerical rank of sampled rows of {what}")
        out.echo("  rows N | rank (mean over repeats)")
        for n, r in zip(curve.sizes, curve.mean, strict=True):
            out.echo(f"  {int(n):>6} | {r:g}")
    out.close()


@main.command("stress")
@click.option("--case", "names", multiple=True, help="Only this case (repeatable).")
@click.option("--n", type=click.IntRange(min=2), default=None,
              help="Override the size n of the cases that have one.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@output_options
def stress_cmd(names, n, as_json, output, quiet, progress_opt):
    """Synthetic stress cases with known minimal rank (§3.1.4): sizes, Ω₂, known rank."""
    from . import synthetic

    registry = synthetic.cases()
    unknown = sorted(set(names) - set(registry))
    if unknown:
        raise click.BadParameter(f"unknown case(s) {unknown}; choose from {list(registry)}",
                                 param_hint="--case")
    chosen = list(names) or list(registry)
    overrides = {c: {"n": n} for c in chosen if n is not None and "n" in registry[c].defaults}
    out = _Report(output, quiet, as_json)
    rows = synthetic.report(chosen, overrides)
    if out.as_json:
        out.json(rows)
    else:
        out.echo(synthetic._table(rows))
        out.echo("\nΩ₂ keeps rows with >= 2 observed cells; "
                 "min rank(Ω) <= 1 + min rank(Ω₂) (Lemma 3).")
    out.close()


@main.command("figures")
@click.option("--quick", is_flag=True, help="Small settings (minutes, not hours).")
@click.option("--only", "only", multiple=True,
              help="Only this analysis (repeatable); names in rankkit.figures.ANALYSES.")
@click.option("-o", "--out-dir", type=click.Path(file_okay=False), default="paper_figures",
              show_default=True,
              help="Folder the figures (.png) and their data (.json) are written to.")
@click.option("--json", "as_json", is_flag=True, help="Print the written files as JSON.")
@click.option("-q", "--quiet", is_flag=True,
              help="Print the list of written files only, not what the analyses print.")
@click.option("--no-progress", is_flag=True,
              help="No progress bars from the analyses (they go to stderr).")
def figures_cmd(quick, only, out_dir, as_json, quiet, no_progress):
    """Regenerate every figure and table under paper_figures/ (the scripts in analyses/)."""
    from . import figures

    try:
        # with --json, stdout carries the JSON only: whatever the analyses print goes to stderr
        with open(os.devnull, "w") as devnull:
            written = figures.run(only=list(only) or None, quick=quick, out_dir=out_dir,
                                  stdout=devnull if quiet else sys.stderr if as_json else None,
                                  progress=not (quiet or no_progress))
    except ValueError as e:  # unknown analysis name: list the known ones
        raise click.BadParameter(str(e), param_hint="--only") from None
    except (FileNotFoundError, figures.AnalysisError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        _echo_json(written)
    else:
        for name, files in written.items():
            click.echo(f"{name}: {', '.join(map(str, files))}")


if __name__ == "__main__":
    main()
