import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rankkit import cli, datasets
from rankkit.omega import reduce_omega2
from rankkit.trie import build_reward_matrix

TEXTS = ["the movie was good", "the movie was bad", "the movie was fine", "the plot was good",
         "a plot", "a movie", "the end", "the end was bad", "", "good good good"]


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory):
    rng = np.random.default_rng(7)
    f = tmp_path_factory.mktemp("cli") / "reviews.csv"
    y = rng.random(len(TEXTS)).round(6)
    f.write_text("review,score\n" + "".join(f'"{t}",{v}\n' for t, v in zip(TEXTS, y, strict=True)))
    return f


@pytest.fixture(scope="module")
def ds(csv_file):
    return datasets.load(str(csv_file), text="review", labels="score")


def invoke(*args):
    res = CliRunner().invoke(cli.main, [str(a) for a in args])
    return res


@pytest.mark.parametrize("cmd,words", [
    ([], ["matrix", "estimate", "rank-curve", "stress", "figures", "datasets"]),
    (["estimate"], ["--eps", "--ranks", "--lam", "--max-iter", "--backend", "--label", "--json"]),
    (["matrix"], ["--limit", "--max-len", "--tokenizer", "--json"]),
    (["rank-curve"], ["--sizes", "--repeats", "--json"]),
    (["stress"], ["--case", "--json"]),
    (["figures"], ["--quick", "--only", "--json"]),
])
def test_help(cmd, words):
    res = invoke(*cmd, "--help")
    assert res.exit_code == 0, res.output
    for w in words:
        assert w in res.output


def test_matrix_json_matches_library(csv_file, ds):
    res = invoke("matrix", csv_file, "--text", "review", "--labels", "score", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    R = build_reward_matrix(ds)
    R2 = reduce_omega2(R)
    assert out["omega"]["rows"] == R.shape[0] and out["omega"]["observed"] == R.nnz
    assert out["omega2"]["rows"] == R2.shape[0] and out["omega2"]["observed"] == R2.nnz
    assert out["texts"] == len(TEXTS) - 1 and out["dropped_empty"] == 1
    by_len = out["by_prefix_length"]
    assert sum(d["rows"] for d in by_len.values()) == R.shape[0]
    assert sum(d["omega2_cells"] for d in by_len.values()) == R2.nnz
    assert sum(out["cells_per_row_histogram"].values()) == R.shape[0]
    # the empty prefix row holds one cell per distinct first token
    assert by_len["0"]["cells"] == len({s[0] for s in ds.sequences.to_lists()})
    text = invoke("matrix", csv_file, "--text", "review", "--labels", "score")
    assert text.exit_code == 0 and f"{R.nnz:,} observed cells" in text.output


def test_estimate_json_and_figure(csv_file, ds, tmp_path):
    fig = tmp_path / "est.png"
    res = invoke("estimate", csv_file, "--text", "review", "--labels", "score", "--ranks", "0,2",
                 "--max-iter", 20, "--json", "--figure", fig, "--backend", "numpy")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    R2 = reduce_omega2(build_reward_matrix(ds))
    # rank 0 is the zero matrix: its MSE is the mean square of the observed Ω₂ values
    ref = float(np.mean(R2.to_scipy().data ** 2))
    assert out["mse_by_rank"]["0"] == pytest.approx(ref, rel=1e3 * np.finfo(float).eps)
    assert out["mse_by_rank"]["2"] <= ref
    assert out["omega2_shape"] == list(R2.shape) and out["figure"] == str(fig)
    assert fig.stat().st_size > 1000
    assert out["method"] == "auto" and [t["rank"] for t in out["trials"]] == [0, 2]
    # the paper's methodology on request: soft-impute fits only
    res = invoke("estimate", csv_file, "--text", "review", "--labels", "score", "--ranks", "0,2",
                 "--method", "soft-impute", "--max-iter", 20, "--json", "--no-figure",
                 "--backend", "numpy")
    si = json.loads(res.output[res.output.index("{"):])
    assert si["method"] == "soft-impute" and si["trials"][1]["method"] == "soft-impute"
    assert si["trials"][1]["n_iter"] <= 20 and si["mse_by_rank"]["0"] == out["mse_by_rank"]["0"]


def test_estimate_text_output_names_table_and_figure(csv_file, tmp_path):
    res = invoke("estimate", csv_file, "--text", "review", "--labels", "score", "--ranks", "0,1",
                 "--max-iter", 5, "--figure", tmp_path / "f.png", "--no-lower-bound")
    assert res.exit_code == 0, res.output
    assert "MSE on Ω₂" in res.output and f"figure written to {tmp_path / 'f.png'}" in res.output


def test_bad_inputs_give_clear_errors(csv_file):
    res = invoke("matrix", csv_file, "--text", "body", "--labels", "score")
    assert res.exit_code != 0 and "column 'body' not found" in res.output
    assert "['review', 'score']" in res.output
    res = invoke("estimate", csv_file, "--text", "review", "--labels", "score", "--ranks", "a,b")
    assert res.exit_code == 2 and "--ranks" in res.output
    res = invoke("estimate", csv_file, "--text", "review", "--labels", "score", "--label", "nope")
    assert res.exit_code == 2 and "'nope' not found" in res.output
    res = invoke("stress", "--case", "nope")
    assert res.exit_code == 2 and "upper_triangular" in res.output


def test_bad_options_fail_before_loading_with_one_clean_line(csv_file, tmp_path, monkeypatch):
    # issue 12: numeric options, a backend the machine lacks and a missing file used to print
    # tracebacks after the data were loaded, and "small.csv: small.csv: …" doubled its prefix
    def no_loading(*a, **k):
        raise AssertionError("data were loaded before the options were checked")

    monkeypatch.setattr(datasets, "load", no_loading)
    base = ("estimate", csv_file, "--text", "review", "--labels", "score")
    for extra, words in ((("--eps", "-1"), "--eps"), (("--eps", "nan"), "--eps"), (("--lam", "-1"), "--lam"),
                         (("--max-abs", "0"), "--max-abs"), (("--backend", "numpy", "--device", "cuda"),
                                                              "--backend / --device")):
        res = invoke(*base, *extra)
        assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output, res.output
        res = invoke(*base, *extra, "--json")
        err = json.loads(res.output)
        assert err["exit_code"] == 2 and words in err["error"] and err["type"] == "BadParameter"
    monkeypatch.undo()
    missing = str(tmp_path / "small.csv")
    res = invoke("estimate", missing)
    assert res.exit_code == 1 and res.output.count("small.csv") == 1, res.output
    err = json.loads(invoke("estimate", missing, "--json").output)
    assert err["exit_code"] == 1 and "neither a preset nor a file" in err["error"]


def test_stress_json_upper_triangular():
    res = invoke("stress", "--case", "upper_triangular", "--case", "arithmetic", "--n", 8, "--json")
    assert res.exit_code == 0, res.output
    rows = {r["case"]: r for r in json.loads(res.output)}
    ut = rows["upper_triangular"]
    # n(n+1)/2 observed cells; row 0 holds only its diagonal cell and is removed by Lemma 3
    assert (ut["rows"], ut["cols"], ut["observed"]) == (8, 8, 36)
    assert (ut["omega2_rows"], ut["single_rows"], ut["known_min_rank"]) == (7, 1, 8)
    assert rows["arithmetic"]["known_min_rank"] == 8


def test_rank_curve_on_npy(tmp_path, rng):
    M = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 12))
    f = tmp_path / "m.npy"
    np.save(f, M)
    res = invoke("rank-curve", f, "--sizes", "1,2,5,20", "--json", "--backend", "numpy")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["sizes"] == [1, 2, 5, 20]
    assert [r[0] for r in out["ranks"]] == [1, 2, 3, 3]


def test_rank_curve_on_dataset(csv_file, ds):
    res = invoke("rank-curve", csv_file, "--text", "review", "--labels", "score", "--sizes",
                 "1,2", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    R2 = reduce_omega2(build_reward_matrix(ds))
    assert out["n_rows"] == R2.shape[0] and out["ranks"][-1][0] <= 2


def test_datasets_lists_presets():
    res = invoke("datasets", "--json")
    assert res.exit_code == 0
    assert set(json.loads(res.output)) == set(datasets.available())


def test_figures_forwards_options(monkeypatch, tmp_path):
    from rankkit import figures

    calls = {}

    def stub(only, quick, out_dir, stdout, progress):
        calls.update(only=only, quick=quick, out_dir=out_dir, progress=progress)
        print("table2_min_rank: vader:movie … done", file=stdout)  # analyses talk on stdout
        return {"table2_min_rank": [f"{out_dir}/table2_min_rank.png"]}

    monkeypatch.setattr(figures, "run", stub)
    res = invoke("figures", "--quick", "--only", "table2_min_rank", "--out-dir", tmp_path, "--json")
    assert res.exit_code == 0, res.output
    assert calls == {"only": ["table2_min_rank"], "quick": True, "out_dir": str(tmp_path),
                     "progress": True}
    # issue 12: with --json, stdout is parseable JSON only (the analysis output went to stderr)
    assert json.loads(res.stdout) == {"table2_min_rank": [f"{tmp_path}/table2_min_rank.png"]}
    assert "vader:movie … done" in res.stderr


    # -o is the output folder; -q drops what the analyses print; --no-progress their bars
    res = invoke("figures", "--only", "table2_min_rank", "-o", tmp_path / "figs", "-q")
    assert res.exit_code == 0, res.output
    assert calls["out_dir"] == str(tmp_path / "figs") and calls["progress"] is False
    assert "vader:movie … done" not in res.output and "table2_min_rank.png" in res.stdout
    invoke("figures", "--only", "table2_min_rank", "--no-progress")
    assert calls["progress"] is False and calls["out_dir"] == "paper_figures"


def test_figures_unknown_analysis_lists_the_known_ones():
    res = invoke("figures", "--only", "nope")
    assert res.exit_code == 2
    assert "unknown analysis ['nope']" in res.output and "table2_min_rank" in res.output


# ---- issue 25, item 6: output options, help everywhere, one label naming, lazy start-up ----------

def _options(group):
    """(command name, option) for every option of every subcommand, and the group's own."""
    for p in group.params:
        yield "rankkit", p
    for name, cmd in group.commands.items():
        for p in cmd.params:
            yield name, p


def test_every_option_has_help():
    import click

    missing = [(cmd, p.opts) for cmd, p in _options(cli.main)
               if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()]
    assert not missing, f"options without help text: {missing}"
    # and the help is shown: every visible option of `estimate` appears with its text
    text = invoke("estimate", "--help").output
    for p in cli.main.commands["estimate"].params:
        if isinstance(p, click.Option) and not p.hidden:
            assert p.opts[-1] in text


def test_label_columns_and_label_are_distinct_and_the_old_spelling_still_reads(csv_file):
    new = invoke("matrix", csv_file, "--text", "review", "--label-columns", "score", "--json")
    old = invoke("matrix", csv_file, "--text", "review", "--labels", "score", "--json")
    assert new.exit_code == old.exit_code == 0, new.output + old.output
    assert json.loads(new.stdout) == json.loads(old.stdout)
    assert json.loads(new.stdout)["labels"] == ["score"]
    help_text = invoke("estimate", "--help").output
    assert "--label-columns" in help_text and "--labels" not in help_text.replace("--label-columns", "")
    bad = invoke("matrix", csv_file, "--text", "review", "--labels", "score", "--label-columns", "x")
    assert bad.exit_code == 2 and "disagree" in bad.output


def test_header_and_summary_name_the_label_alike(csv_file):
    res = invoke("estimate", csv_file, "--text", "review", "--label-columns", "score", "--ranks",
                 "0,1", "--max-iter", 5, "--no-figure", "--no-lower-bound", "--label", "0")
    assert res.exit_code == 0, res.output
    header, summary = res.stdout.split("\n", 1)
    assert "label 'score'" in header and "label 'score'" in summary
    assert "label 0" not in res.stdout


def _without_seconds(report: str) -> str:
    """The report with its timing column blanked: seconds differ run to run."""
    return re.sub(r"\|\s+\d+\.\d+\s+\|", "| s |", report)


def test_quiet_and_no_progress(csv_file, tmp_path):
    base = ("estimate", csv_file, "--text", "review", "--label-columns", "score", "--ranks", "0,1",
            "--max-iter", 5, "--no-lower-bound", "--figure", tmp_path / "f.png")
    loud = invoke(*base, "--progress")
    assert loud.exit_code == 0, loud.output
    assert "build_reward_matrix" in loud.stderr  # a progress bar
    # by default bars only on an interactive terminal: the runner's stderr is not one
    default = invoke(*base)
    assert "build_reward_matrix" not in default.stderr and "figure written to" in default.stderr
    assert _without_seconds(default.stdout) == _without_seconds(loud.stdout)
    assert "figure written to" in loud.stderr and " s)" in loud.stderr
    quiet = invoke(*base, "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""  # no bar, no timing, no note
    # the result itself is unchanged: the same report on stdout
    assert _without_seconds(quiet.stdout) == _without_seconds(loud.stdout) and "MSE on Ω₂" in quiet.stdout
    calm = invoke(*base, "--no-progress")
    assert "build_reward_matrix" not in calm.stderr and "figure written to" in calm.stderr
    assert _without_seconds(calm.stdout) == _without_seconds(loud.stdout)
    m = invoke("matrix", csv_file, "--text", "review", "--label-columns", "score", "--no-progress")
    assert m.exit_code == 0 and "build_reward_matrix" not in m.stderr and "P_Ω(R)" in m.stdout


def test_output_writes_the_result_to_a_file(csv_file, tmp_path):
    args = ("matrix", csv_file, "--text", "review", "--label-columns", "score")
    want = json.loads(invoke(*args, "--json").stdout)
    res = invoke(*args, "-o", tmp_path / "sub" / "m.json")  # a .json name: JSON, folders made
    assert res.exit_code == 0, res.output
    assert res.stdout == "" and json.loads((tmp_path / "sub" / "m.json").read_text()) == want
    assert f"result written to {tmp_path / 'sub' / 'm.json'}" in res.stderr
    text = invoke(*args, "--output", tmp_path / "m.txt")
    assert (tmp_path / "m.txt").read_text() == invoke(*args).stdout
    assert text.stdout == ""
    js = invoke(*args, "--json", "-o", tmp_path / "m.out")  # --json picks JSON for any name
    assert json.loads((tmp_path / "m.out").read_text()) == want and js.exit_code == 0
    # a run that fails leaves no file behind
    bad = invoke("matrix", csv_file, "--text", "body", "-o", tmp_path / "bad.json")
    assert bad.exit_code != 0 and not (tmp_path / "bad.json").exists()
    # the other subcommands take it too
    invoke("stress", "--case", "upper_triangular", "--n", 8, "-o", tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text())[0]["case"] == "upper_triangular"
    invoke("datasets", "-o", tmp_path / "d.json")
    assert "vader:movie" in json.loads((tmp_path / "d.json").read_text())


def test_help_starts_without_heavy_imports():
    """``rankkit --help`` (and a subcommand's) imports neither torch, transformers, matplotlib
    nor numba: they load only when a subcommand runs that needs them."""
    import subprocess
    import sys

    heavy = ["torch", "transformers", "matplotlib", "numba", "sklearn", "scipy"]
    code = ("import sys, runpy\n"
            "sys.argv = ['rankkit'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('rankkit', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            f"print('LOADED', [m for m in {heavy!r} if m in sys.modules])")
    for args in (["--help"], ["estimate", "--help"], ["datasets"]):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).parents[1]).stdout
        assert "LOADED []" in out, (args, out[-300:])


def test_estimate_normalize_divides_star_labels(tmp_path):
    """Labels of 1–5 stars: without --normalize the estimate warns that ε is absolute; with it,
    the values are divided by 5 and the JSON says so."""
    f = tmp_path / "stars.csv"
    stars = [1, 5, 3, 4, 2, 5, 1, 3, 4, 2]
    f.write_text("review,stars\n" + "".join(f'"{t}",{v}\n' for t, v in zip(TEXTS, stars, strict=True)))
    base = ["estimate", f, "--text", "review", "--label-columns", "stars", "--ranks", "0,2",
            "--max-iter", 20, "--json", "--no-figure", "--backend", "numpy"]
    with pytest.warns(Warning, match=r"outside \[0, 1\]"):
        res = invoke(*base)
    assert res.exit_code == 0, res.output
    plain = json.loads(res.output[res.output.index("{"):])
    assert plain["label_range"] == [1.0, 5.0] and plain["label_scale"] == 1.0
    res = invoke(*base, "--normalize")
    assert res.exit_code == 0, res.output
    norm = json.loads(res.output[res.output.index("{"):])
    assert norm["label_range"] == [1.0, 5.0] and norm["label_scale"] == 5.0
    # rank 0 is the zero matrix: its MSE scales by 1/25 exactly as the values by 1/5
    assert norm["mse_by_rank"]["0"] == pytest.approx(plain["mse_by_rank"]["0"] / 25, rel=1e-12)
