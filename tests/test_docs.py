"""The README's commands stay true: CI runs exactly its test command."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The indented command lines near the top of the README (set-up + main job, set-up + tests)."""
    head = (REPO / "README.md").read_text().splitlines()[:12]
    return [line.strip() for line in head if line.startswith("    ")]


def test_readme_starts_with_the_two_commands():
    main_job, tests = readme_commands()[:2]
    assert "snakemake --cores 2" in main_job and "torch==2.13.0" in main_job
    assert "pytest" in tests and "torch==2.13.0" in tests


def test_ci_runs_exactly_the_readme_test_command():
    tests = readme_commands()[1]
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines
