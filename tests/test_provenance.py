"""Which code ran: eval's run.json records the version, the import path and, in a git checkout, the commit; a run
resumed by other code says so (issue 19: a background run used an older installed copy and nothing showed it)."""

import json
import subprocess
from pathlib import Path

import pytest

import sia_edge
from sia_edge import provenance
from sia_edge.errors import InvalidSettingError
from sia_edge.evaluation.run import check_or_write_run


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    """A git checkout with a package at its top, as a clone of this project is."""
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("x = 1\n")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    return root


def test_the_commit_of_a_checkout_and_none_for_a_copy(checkout, tmp_path):
    head = git(checkout, "rev-parse", "HEAD")
    assert provenance.git_commit(checkout) == head
    (checkout / "pkg" / "mod.py").write_text("x = 2\n")
    assert provenance.git_commit(checkout) == head + "+dirty"
    assert provenance.git_commit(checkout / "pkg") is None  # inside a work tree, but not a checkout's top
    copy = tmp_path / "site-packages"
    copy.mkdir()
    assert provenance.git_commit(copy) is None


def test_software_names_the_imported_code():
    record = provenance.software()
    assert record["version"] == sia_edge.__version__
    assert Path(record["path"]) == Path(sia_edge.__file__).resolve().parent
    root = Path(sia_edge.__file__).resolve().parents[1]
    assert record["checkout"] == (root / ".git").exists() and record["commit"] == provenance.git_commit(root)


def test_software_tells_a_checkout_from_an_installed_copy(checkout, tmp_path):
    in_checkout = provenance.software(checkout / "pkg")
    assert in_checkout["checkout"] and in_checkout["commit"] == git(checkout, "rev-parse", "HEAD")
    (tmp_path / "venv" / "pkg").mkdir(parents=True)
    copy = provenance.software(tmp_path / "venv" / "pkg")
    assert (copy["checkout"], copy["commit"], copy["path"]) == (False, None, str(tmp_path / "venv" / "pkg"))


def test_a_run_records_its_code_and_a_resume_by_other_code_says_so(tmp_path, capsys):
    config = {"format": 2, "seeds": 1}
    first = {"version": "0.1.0", "path": "/src/sia_edge", "checkout": True, "commit": "a" * 40}
    check_or_write_run(tmp_path, config, first)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["software"] == first and "resumed_by" not in run

    check_or_write_run(tmp_path, config, dict(first))  # the same code resumes silently
    assert capsys.readouterr().err == ""

    installed = {"version": "0.0.9", "path": "/venv/site-packages/sia_edge", "checkout": False, "commit": None}
    for _ in range(2):  # warned each time, recorded once
        check_or_write_run(tmp_path, config, installed)
        err = capsys.readouterr().err
        assert "warning" in err and "0.1.0 at aaaaaaaaaaaa" in err and "0.0.9 installed copy" in err
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["software"] == first and run["resumed_by"] == [installed]

    with pytest.raises(InvalidSettingError, match="other settings"):  # settings are still compared
        check_or_write_run(tmp_path, {**config, "seeds": 2}, first)


def test_a_run_from_before_the_record_is_resumed_with_a_warning(tmp_path, capsys):
    (tmp_path / "run.json").write_text(json.dumps({"format": 2}))
    check_or_write_run(tmp_path, {"format": 2}, provenance.software())
    assert "unrecorded sia-edge version" in capsys.readouterr().err
