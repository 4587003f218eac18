"""Nox sessions: tests (one per supported Python), ray, torch, cookbook, lint, typecheck, bench, proto."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.11", "3.12", "3.13"]
"""The supported Pythons: keep in step with ``requires-python`` and the classifiers in pyproject.toml."""

COOKBOOK = "tinker-cookbook==0.6.1"
"""The official tinker-cookbook that tests/test_cookbook_referee.py drives: pinned, as its internals move quickly; it
needs the official SDK at least as new as the test extra's tinker==0.38.0. Installed without its dependencies (one of
them, tml-renderers>=0.4.1, is not on every index, and the modules we drive never import it): ``COOKBOOK_DEPS`` are the
ones those modules do import, with the recipe's math-rl extra (pylatexenc, math-verify; sympy comes with torch) that
recipes/rl_loop.py imports."""

COOKBOOK_DEPS = [
    *("torch", "chz", "blobfile", "datasets", "pillow", "termcolor", "rich", "tqdm"),
    *("pylatexenc", "math-verify"),
]

PROTOC_TOOLS = "grpcio-tools==1.63.2"
"""The protoc that generated tinkex_trio/_proto: its protobuf version (5.26.1) is the runtime floor in pyproject (a
runtime must never be older than the gencode), so regenerating with a newer one raises that floor. Keep in step with
the dev extra."""


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite (with the test extra only, so protobuf resolves to its newest release)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python="3.11")
def ray(session: nox.Session) -> None:
    """The Ray example on a local Ray (``examples/ray_rollouts.py``): CI's default run skips it, Ray being a ~80 MB
    install for one example."""
    session.install("-e", ".[test,ray]")
    session.run("pytest", "tests/test_examples.py", "-k", "ray", *session.posargs)


@nox.session(python="3.11")
def torch(session: nox.Session) -> None:
    """Custom losses with PyTorch: against the official SDK's (tests/test_equivalence_custom_loss.py) and by handle
    (tests/test_loss_handles.py). PyTorch is a multi-GB install that CI's default run skips."""
    session.install("-e", ".[test]", "torch")
    session.run(
        "pytest",
        "tests/test_equivalence_custom_loss.py",
        "tests/test_loss_handles.py",
        "tests/test_parity.py",
        *session.posargs,
    )


@nox.session(python="3.11")
def cookbook(session: nox.Session) -> None:
    """The official tinker-cookbook's RL and supervised paths, and its whole RL and SL trainers, through the official
    SDK against the simulator (tests/test_cookbook_referee.py). The cookbook pulls PyTorch and transformers, multi-GB
    installs that CI's default run skips; here a part that cannot be imported fails instead of being skipped."""
    session.install("-e", ".[test]", *COOKBOOK_DEPS)
    session.install("--no-deps", COOKBOOK)
    session.run("pytest", "tests/test_cookbook_referee.py", *session.posargs, env={"TINKEX_COOKBOOK_REQUIRED": "1"})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """pyright in strict mode over the library."""
    session.install("-e", ".[dev]")
    session.run("pyright")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the side-by-side benchmarks."""
    session.install("-e", ".[dev]")
    session.run("python", "benchmarks/bench_codec.py", *session.posargs)


@nox.session(python="3.11")  # grpcio-tools 1.63 has no wheels for 3.13
def proto(session: nox.Session) -> None:
    """Regenerate the protobuf module (and its .pyi) from tinkex_trio/_proto/tinkex_wire.proto."""
    session.install(PROTOC_TOOLS)
    session.run(
        "python",
        "-m",
        "grpc_tools.protoc",
        "-Itinkex_trio/_proto",
        "--python_out=tinkex_trio/_proto",
        "--pyi_out=tinkex_trio/_proto",
        "tinkex_trio/_proto/tinkex_wire.proto",
    )
