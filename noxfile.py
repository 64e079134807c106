"""The backend matrix: ``nox -s numpy torch jax tensorflow`` each install only
NumPy plus that one framework (proving the others optional); ``all`` installs
everything; ``bench`` runs the benchmark suite; ``lint`` runs ruff."""

from __future__ import annotations

import nox

nox.options.sessions = ["numpy", "torch", "jax", "tensorflow", "all", "lint", "typecheck"]
CONSTRAINTS = ("-c", "constraints.txt")


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
