"""The benchmarks' command line refuses what it cannot run, before running anything
(an unknown or empty backend list wrote empty results over the committed ones)."""

from __future__ import annotations

import pytest

# (the suite lives in a checkout, beside the package: not in an installed lars_multi)
suite = pytest.importorskip("benchmarks.__main__", reason="the benchmark suite of a checkout")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--optimizer", "--backends", "foo"], "--backends"),
        (["--optimizer", "--backends", ","], "--backends"),
        (["--backends", ","], "unknown backends"),
        (["--backends", "numpy,foo"], "unknown backends"),
        (["--workloads", "bar"], "unknown workloads"),
        (["--optimizer", "--workloads", "bar"], "unknown workloads"),  # (was ignored)
        (["--optimizer", "--workloads", "tiny"], "unknown workloads"),  # (no optimizer workload)
        (["--rounds", "0"], "--rounds"),
        (["--rounds", "-1"], "--rounds"),
        (["--budget", "-1"], "--budget"),
        (["--compiled-cap", "-2"], "--compiled-cap"),
    ],
    ids=" ".join,
)
def test_bad_arguments_are_refused(args, needle, tmp_path):
    with pytest.raises(SystemExit) as info:
        suite.main([*args, "--out", str(tmp_path / "results")])
    assert needle in str(info.value.code)
    assert not (tmp_path / "results").exists()


def test_an_out_that_is_a_file_is_refused_before_the_run(tmp_path, capsys):
    """--out naming a file failed mkdir after the whole run, with a traceback."""
    target = tmp_path / "results"
    target.write_text("not a folder")
    with pytest.raises(SystemExit) as info:
        suite.main(["--workloads", "tiny", "--out", str(target)])
    assert info.value.code == 2
    assert "--out: expected a folder" in capsys.readouterr().err


def test_an_out_where_nothing_can_be_written_is_refused_before_the_run(capsys):
    """--out in a folder that cannot be made (under /proc) passed the check and failed
    after the whole run."""
    with pytest.raises(SystemExit) as info:
        suite.main(["--workloads", "tiny", "--out", "/proc/no/results"])
    assert info.value.code == 2
    assert (
        "--out: expected a folder (made if missing) that files can be written in" in capsys.readouterr().err
    )


def test_a_backend_that_is_not_installed_is_skipped_in_one_line(tmp_path):
    """Each workload printed a traceback for a backend whose framework is not installed."""
    import subprocess
    import sys

    script = (
        "import sys; sys.modules['tensorflow'] = None\n"  # (cannot be imported)
        "from benchmarks.__main__ import main\n"
        f"main(['--backends', 'numpy,tensorflow', '--workloads', 'tiny', '--quick', '--no-memory', "
        f"'--out', {str(tmp_path)!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "skipped, not installed: tensorflow" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert (tmp_path / "latest.json").exists()
