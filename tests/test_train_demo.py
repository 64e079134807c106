"""``python -m lars_multi train``: the MLP on the digits trains on every installed backend.

The demo runs in this process (the frameworks are imported inside the tests, as
everywhere in the suite), for a few epochs; the last line of its output is the
test accuracy with two decimals.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import warnings

import pytest
from conftest import ALL_BACKENDS, require_backend

from lars_multi.__main__ import main

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


def _train(capsys, *args: str) -> list[str]:
    main(["train", *args])
    return capsys.readouterr().out.strip().splitlines()


def _accuracy(last_line: str) -> float:
    prefix = "test accuracy: "
    assert last_line.startswith(prefix), last_line
    value = last_line[len(prefix) :]
    assert len(value) == 4 and value[1] == ".", last_line  # two decimals: "0.97"
    return float(value)


def _demo_device(backend: str) -> contextlib.AbstractContextManager:
    """The torch demo feeds its model ``torch.from_numpy`` batches: it trains on the
    CPU, so its model is made there too, whatever device the torch tests run on."""
    if backend != "torch":
        return contextlib.nullcontext()
    import torch

    return torch.device("cpu")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_train_few_epochs(backend, tmp_path, capsys):
    require_backend(backend)
    out = tmp_path / "curves.png"
    with _demo_device(backend):
        lines = _train(capsys, "--backend", backend, "--epochs", "4", "--out", str(out))
    assert _accuracy(lines[-1]) > 0.8
    assert out.read_bytes()[:8] == PNG


def test_compare_large_batch(tmp_path, capsys):
    out = tmp_path / "compare.png"
    args = ("--backend", "numpy", "--batch-size", "1024", "--epochs", "10", "--compare", "--out", str(out))
    lines = _train(capsys, *args)
    assert any(line.startswith("SGD") for line in lines)
    assert any(line.startswith("LARS") for line in lines)
    assert _accuracy(lines[-1]) > 0.8
    assert out.read_bytes()[:8] == PNG


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--lr", "0"), "--lr"),
        (("--lr", "nan"), "--lr"),
        (("--trust-coefficient", "0"), "--trust-coefficient"),
        (("--weight-decay", "-1"), "--weight-decay"),
        (("--seed", "-1"), "--seed"),
        (("--seed", str(2**32)), "--seed"),
        (("--lr", "1e39"), "--lr"),  # (inf in float32: the model and its rates)
        (("--trust-coefficient", "1e39"), "--trust-coefficient"),  # (was refused after training began)
        (("--weight-decay", "1e39"), "--weight-decay"),
        (("--compare", "--lr", "0.5"), "--compare"),
        (("--compare", "--optimizer", "sgd"), "--compare"),
        (("--out", "curves.svg"), "--out"),
        (("--out", "no/such/folder/curves.png"), "--out"),
        (("--out", "made.png"), "--out"),  # (a folder of that name)
        (("--out", "/proc/curves.png"), "--out"),  # (a folder no file can be made in)
        (
            ("--out", "curves.png/"),
            "--out",
        ),  # (a folder's name: was saved as curves.png/.png, after training)
        (("--out", ""), "--out"),  # (wrote the default file)
        (("--out", "dangling.png"), "--out"),  # (a link to a missing folder)
        (("--epochs", "1e20"), "--epochs"),  # (not an integer: argparse's own message)
        (("--epochs", str(10**7)), "--epochs"),  # (a traceback)
    ],
    ids=lambda a: " ".join(a) if isinstance(a, tuple) else a,
)
def test_bad_arguments_are_refused_before_training(args, needle, tmp_path, monkeypatch, capsys):
    """A clear message and a failing exit, not a traceback after training (--out) or
    an ignored argument (--compare with --lr)."""
    monkeypatch.chdir(tmp_path)
    if "made.png" in args:
        (tmp_path / "made.png").mkdir()
    if "dangling.png" in args:
        (tmp_path / "dangling.png").symlink_to(tmp_path / "no" / "such" / "curves.png")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as info:
        main(["train", "--backend", "numpy", "--epochs", "1", *args])
    assert needle in str(info.value.code) or needle in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_train_uses_its_backend_whatever_lars_multi_backend_says(tmp_path):
    """With LARS_MULTI_BACKEND naming another framework, train --backend numpy (jax,
    tensorflow) failed with a MixedFrameworksError traceback after training began."""
    require_backend("torch")
    out = tmp_path / "curves.png"
    command = ["-m", "lars_multi", "train", "--backend", "numpy", "--epochs", "1", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, *command],
        env={**os.environ, "LARS_MULTI_BACKEND": "torch"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("test accuracy: ")


def test_an_unwritable_default_plot_path_is_refused_before_training(monkeypatch):
    """Without --out the plot goes to the working folder: one that cannot be written
    was found only after training, with a traceback instead of the accuracy."""
    monkeypatch.chdir("/proc")
    with pytest.raises(SystemExit) as info:
        main(["train", "--backend", "numpy", "--epochs", "1"])
    assert "--out" in str(info.value.code) and "lars_train_numpy.png" in str(info.value.code)


@pytest.mark.parametrize("module", ["matplotlib", "sklearn", "torch"])
def test_a_missing_package_is_named_before_training(module, monkeypatch, tmp_path):
    """Without matplotlib the whole training ran, then plotting raised; without
    scikit-learn or the backend's framework, a traceback."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)  # (cannot be imported)
    with pytest.raises(SystemExit) as info:
        main(["train", "--backend", "torch", "--epochs", "1"])
    name = "scikit-learn" if module == "sklearn" else module
    assert f"train needs {name}, which cannot be imported here" in str(info.value.code)


def test_a_broken_package_is_named_before_training(tmp_path):
    """A package that is installed but fails to import (here a stand-in matplotlib that
    raises) was found and taken: the whole training ran, then plotting raised a traceback."""
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise RuntimeError('a broken install')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    done = subprocess.run(
        [sys.executable, "-m", "lars_multi", "train", "--backend", "numpy", "--epochs", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1, done
    assert (
        "train needs matplotlib, which cannot be imported here (matplotlib: RuntimeError: a broken"
        in done.stderr
    )
    assert "Traceback" not in done.stderr and "test accuracy" not in done.stdout


def test_a_loss_that_becomes_nan_is_said(tmp_path, capsys):
    """A learning rate that fits float32 but diverges trained to NaN with no word of it;
    then it was said, with NumPy's overflow warnings, and the exit status was 0."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit) as info:
            main(
                [
                    "train",
                    "--backend",
                    "numpy",
                    "--epochs",
                    "1",
                    "--lr",
                    "3e38",
                    "--out",
                    str(tmp_path / "a.png"),
                ]
            )
    assert info.value.code == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert any("the loss is nan: the learning rate is too large" in line for line in lines), lines
    assert lines[-1].startswith("test accuracy: ")
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("command", ["info", "demo"])
def test_help_of_commands_without_arguments(command, capsys):
    """``info --help`` said "info takes no arguments, got --help"."""
    main([command, "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and command in out.splitlines()[0] and "(no arguments)" in out


def test_no_command_is_a_usage_error_naming_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "a command is required: info, demo, bench or train" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["info", "demo"])
def test_commands_without_arguments_refuse_extra_ones(command, capsys):
    """``python -m lars_multi info extra`` is a usage error (the extra words were ignored)."""
    with pytest.raises(SystemExit) as info:
        main([command, "extra"])
    assert info.value.code == 2
    assert f"{command} takes no arguments, got extra" in capsys.readouterr().err


def test_bench_runs_the_checkouts_suite_not_a_benchmarks_package_of_the_current_directory(tmp_path):
    """``python -m lars_multi bench`` runs lars_multi's own suite (beside the package),
    wherever it is started: a ``benchmarks`` package of the user's project was run instead."""
    user = tmp_path / "benchmarks"
    user.mkdir()
    (user / "__init__.py").write_text("")
    (user / "__main__.py").write_text("print('the user project ran')\n")
    done = subprocess.run(
        [sys.executable, "-m", "lars_multi", "bench", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "the user project ran" not in done.stdout
    assert "--optimizer" in done.stdout  # (the suite's own options)
