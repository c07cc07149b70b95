"""The figure runner (``rankkit figures``, :mod:`rankkit.figures`) and the direction of imports:
the package finds and runs ``analyses/`` as subprocesses and never imports it."""

import ast
import io
import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import rankkit
from rankkit import cli, figures

ROOT = Path(rankkit.__file__).resolve().parents[1]


def _fake_analyses(root: Path, scripts: dict[str, str]) -> Path:
    """A package ``analyses`` under ``root`` whose modules are ``scripts`` (name -> body)."""
    folder = root / "analyses"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    for name, body in scripts.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(body))
    return folder


# writes what it was called with and how it was imported, talks on stdout and stderr
RECORDER = """
    import json, sys
    from pathlib import Path
    out = Path(sys.argv[sys.argv.index("--out") + 1])
    name = __spec__.name.rsplit(".", 1)[-1]
    (out / f"{name}.json").write_text(json.dumps({"argv": sys.argv[1:], "module": __spec__.name}))
    print(f"{name} on stdout")
    print(f"{name} on stderr", file=sys.stderr)
"""


def test_registry_names_the_checkout_scripts():
    assert len(set(figures.ANALYSES)) == len(figures.ANALYSES)
    for name in figures.ANALYSES:
        assert (ROOT / "analyses" / f"{name}.py").is_file(), name
    # the thin script entry holds no list of its own
    assert "MODULES" not in (ROOT / "analyses" / "run_all.py").read_text()


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant)):
            out.append(str(node.args[0].value))
    return out


def _edits_sys_path(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value  # sys.path.insert(...), .append(...), .extend(...)
        elif isinstance(node, ast.Assign | ast.AugAssign):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
        if (isinstance(target, ast.Attribute) and target.attr == "path"
                and isinstance(target.value, ast.Name) and target.value.id == "sys"):
            return True
    return False


def test_arrows_point_down():
    """No module of the packages imports the scripts above them, and nothing the analyses,
    the benchmarks or the tests run edits ``sys.path`` (``python -m`` from the checkout, or the
    installed package, is how they import; a benchmark's sibling modules are on sys.path[0]
    because it runs as a script)."""
    packages = sorted((ROOT / "rankkit").rglob("*.py")) + sorted((ROOT / "rankkit_ext").rglob("*.py"))
    assert len(packages) > 20
    upward = {str(p.relative_to(ROOT)): m for p in packages for m in _imports(p)
              if m.split(".")[0] in ("analyses", "benchmarks", "tests")}
    assert upward == {}
    scripts = (sorted((ROOT / "analyses").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
               + sorted((ROOT / "tests").rglob("*.py")))
    edits = [str(p.relative_to(ROOT)) for p in packages + scripts if _edits_sys_path(p)]
    assert edits == []
    assert not [str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py")
                if any(m.split(".")[0] == "analyses" for m in _imports(p))]


def test_sys_path_detector_sees_an_edit(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import sys\nsys.path.insert(0, '.')\n")
    assert _edits_sys_path(f)
    f.write_text("import sys\nprint(sys.path[0])\n")
    assert not _edits_sys_path(f)


def test_from_another_directory_the_checkout_is_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no analyses/ here
    assert figures.find_analyses() == ROOT / "analyses"


def test_runs_each_analysis_as_a_module_of_the_folder_found(tmp_path, monkeypatch):
    _fake_analyses(tmp_path, {"data_rank_structure": RECORDER, "table2_min_rank": RECORDER})
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    written = figures.run(only=["table2_min_rank", "data_rank_structure"], quick=True,
                          out_dir="figs", stdout=out)
    figs = tmp_path / "figs"
    # registry order, not the order asked in; every file each one wrote
    assert list(written) == ["data_rank_structure", "table2_min_rank"]
    assert written["table2_min_rank"] == [str(figs / "table2_min_rank.json")]
    rec = json.loads((figs / "data_rank_structure.json").read_text())
    # run as `python -m analyses.<name>`, out_dir made absolute (the child's cwd differs)
    assert rec == {"argv": ["--out", str(figs), "--quick"],
                   "module": "analyses.data_rank_structure"}
    assert out.getvalue().splitlines() == ["data_rank_structure on stdout",
                                           "table2_min_rank on stdout"]


def test_unrelated_analyses_folder_is_passed_over(tmp_path, monkeypatch):
    (tmp_path / "analyses").mkdir()
    (tmp_path / "analyses" / "notes.py").write_text("")
    monkeypatch.chdir(tmp_path)
    assert figures.find_analyses(["data_rank_structure"]) == ROOT / "analyses"


def test_failing_analysis_reports_status_and_stderr(tmp_path, monkeypatch):
    _fake_analyses(tmp_path, {
        "data_rank_structure": RECORDER,
        "stress_upper_triangular": """
            import sys
            print("Ω step 1 of 2", file=sys.stderr)
            sys.exit("boom: the input was bad")
        """,
        "table2_min_rank": RECORDER})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(figures.AnalysisError) as e:
        figures.run(out_dir="figs", stdout=io.StringIO(),
                    only=["data_rank_structure", "stress_upper_triangular", "table2_min_rank"])
    assert e.value.name == "stress_upper_triangular" and e.value.returncode == 1
    msg = str(e.value)
    assert "exit status 1" in msg and "python -m analyses.stress_upper_triangular" in msg
    assert "Ω step 1 of 2" in msg and "boom: the input was bad" in msg
    assert (tmp_path / "figs" / "data_rank_structure.json").exists()
    assert not (tmp_path / "figs" / "table2_min_rank.json").exists()  # stopped at the failure
    # the CLI turns it into an error message and exit status 1
    res = CliRunner().invoke(cli.main, ["figures", "--only", "stress_upper_triangular",
                                        "--out-dir", str(tmp_path / "figs")])
    assert res.exit_code == 1 and "boom: the input was bad" in res.output


def test_no_analyses_anywhere_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wheel = tmp_path / "site-packages"  # an installed package without the checkout around it
    monkeypatch.setattr(figures, "__file__", str(wheel / "rankkit" / "figures.py"))
    with pytest.raises(FileNotFoundError) as e:
        figures.find_analyses()
    msg = str(e.value)
    assert str(tmp_path / "analyses") in msg and str(wheel / "analyses") in msg
    assert "source checkout" in msg
    res = CliRunner().invoke(cli.main, ["figures", "--only", "data_rank_structure"])
    assert res.exit_code == 1 and "analysis scripts were not found" in res.output


def test_unknown_name_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"unknown analysis \['nope'\]; available"):
        figures.run(only=["nope"], out_dir="figs")
    assert not (tmp_path / "figs").exists()
