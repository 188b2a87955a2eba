"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples_and_the_two_commands_first():
    head = README.read_text().splitlines()[:6]
    assert any("make demo" in line for line in head) and any("make test" in line for line in head)
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, capsys):
    """Each block runs, and every fold error it prints is that of an exact fold (float32 tolerance)."""
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {})
    errors = [float(e) for e in re.findall(r"max rel error ([0-9.eE+-]+)", capsys.readouterr().out)]
    assert errors, "the example prints no fold error"
    assert max(errors) <= 1e-4, f"README example {index} printed a fold error of {max(errors):.2e}"
