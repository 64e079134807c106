"""The backend matrix: ``nox -s numpy torch jax tensorflow`` each install only
NumPy plus that one framework (proving the others optional); ``all`` installs
everything; ``minimum`` tests NumPy alone at the lowest versions pyproject allows;
``installed`` tests a regular (not editable) install from outside the checkout;
``bench`` runs the benchmark suite; ``lint`` runs ruff; ``typecheck`` runs mypy."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = [
    *("numpy", "torch", "jax", "tensorflow", "all"),
    *("minimum", "installed", "lint", "typecheck"),
]
CONSTRAINTS = ("-c", "constraints.txt")
ROOT = Path(__file__).parent
# The lowest versions of the dependencies that pyproject allows.
MINIMUM = ("numpy==1.26.4", "optree==0.13.0", "rich==13.0.0")


def _test(session: nox.Session, extras: str, backends: str) -> None:
    session.install(*CONSTRAINTS, "-e", f".[{extras}]")
    session.run("pytest", *session.posargs, env={"LARS_MULTI_TEST_BACKENDS": backends})


@nox.session
def numpy(session: nox.Session) -> None:
    _test(session, "test", "numpy")


@nox.session
def torch(session: nox.Session) -> None:
    _test(session, "torch,test", "numpy,torch")


@nox.session
def jax(session: nox.Session) -> None:
    _test(session, "jax,jax-ecosystem,test", "numpy,jax")


@nox.session
def tensorflow(session: nox.Session) -> None:
    _test(session, "tensorflow,test", "numpy,tensorflow")


@nox.session(name="all")
def all_backends(session: nox.Session) -> None:
    _test(session, "all,test", "numpy,torch,jax,tensorflow")


@nox.session
def minimum(session: nox.Session) -> None:
    session.install(*MINIMUM, "pytest", "hypothesis", "ml_dtypes")
    session.install("--no-deps", "-e", ".")
    session.run("pytest", *session.posargs, env={"LARS_MULTI_TEST_BACKENDS": "numpy"})


@nox.session
def installed(session: nox.Session) -> None:
    """A regular install, tested from another directory, so that nothing is imported
    from the checkout: what a wheel or an sdist holds."""
    session.install(*CONSTRAINTS, ".[test]")
    session.chdir(session.create_tmp())
    session.run("pytest", str(ROOT / "tests"), *session.posargs, env={"LARS_MULTI_TEST_BACKENDS": "numpy"})


@nox.session
def bench(session: nox.Session) -> None:
    session.install(*CONSTRAINTS, "-e", ".[all,scipy,bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install(*CONSTRAINTS, "-e", ".[all]", "mypy")
    session.run("mypy", "lars_multi", "backends", "benchmarks", "--ignore-missing-imports")
