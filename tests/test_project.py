"""The project's own wiring: the README's quick start, .ci/run and the GitHub Actions workflow agree,
and the workflow passes actionlint."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_ci_runs_the_readme_test_command_then_the_slow_checks_and_the_linter():
    script = (ROOT / ".ci" / "run").read_text()
    test_command = quick_start_commands()[1]
    commands = [line for line in script.splitlines() if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert test_command in commands, "the README's test command"
    first = commands.index(test_command)
    assert commands[first:] == [test_command, "python -m pytest -q -m slow", "ruff check ."]
    # Before it, only the browser that tests/test_browse_page.py drives.
    assert commands[:first] == [] or "apt-get install -y -qq chromium" in "\n".join(commands[:first])


def actionlint() -> str:
    """The test extra installs actionlint beside this interpreter (found also without an activated venv)."""
    found = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    if found is None:
        pytest.fail("actionlint is not installed: pip install -e '.[test]'")
    return found


def test_workflow_runs_ci_script_and_passes_actionlint():
    workflow = ROOT / ".github" / "workflows" / "ci.yml"
    assert "bash .ci/run" in workflow.read_text()
    result = subprocess.run([actionlint(), str(workflow)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_rejects_a_broken_workflow(tmp_path):
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text("on: push\njobs:\n  t:\n    runs-on: ubuntu-latest\n    steps:\n"
                      "      - run: echo ${{ matrix.nope }}\n")
    result = subprocess.run([actionlint(), str(broken)], capture_output=True, text=True)
    assert result.returncode != 0
