"""The command line explains itself: --version, gmemlab list, --help, exit codes."""

from __future__ import annotations

from typer.testing import CliRunner

from gmemlab.cli import app
from gmemlab.model.designs import DESIGNS, VARIANTS

runner = CliRunner()


def test_version() -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"gmemlab {version('gmemlab')}"


def test_list_designs_scenarios_ops_mutants() -> None:
    result = runner.invoke(app, ["list", "designs"])
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.splitlines()]
    assert names == list(DESIGNS) + list(VARIANTS)
    assert "(variant)" in result.output.split("seed-late-has-mapping", 1)[1][:20]
    result = runner.invoke(app, ["list", "scenarios"])
    assert ["seed_default", "[seed]"] in [line.split()[:2] for line in result.output.splitlines()]
    ops = runner.invoke(app, ["list", "ops"]).output
    assert "create_guest_memfd" in ops and "(model only)" in ops.split("get_pfn", 1)[1][:40]
    assert "unmap-keeps-has-mapping" in runner.invoke(app, ["list", "mutants"]).output


def test_list_workloads_names_every_bundled_one() -> None:
    from gmemlab.compare.workloads import bundled_names

    result = runner.invoke(app, ["list", "workloads"])
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.output.splitlines()]
    assert names == bundled_names() and "dma-pool" in names
    assert "granule by granule" in result.output.split("dma-pool", 1)[1].splitlines()[0]


def test_list_suggests_a_close_name() -> None:
    result = runner.invoke(app, ["list", "design"])
    assert result.exit_code == 2
    assert "did you mean 'designs'?" in result.output


def test_help_is_plain_and_shows_defaults() -> None:
    result = runner.invoke(app, ["check", "--help"])
    assert result.exit_code == 0
    assert "<bool>" not in result.output and "[default: auto]" in " ".join(result.output.split())
    assert "XDG_STATE_HOME" in result.output
