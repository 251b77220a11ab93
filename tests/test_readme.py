"""The README's Python example runs as written and prints what it says; its demo table is what
`modgap train` prints."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import NO_PROBE, TINY, readme_demo_table, table_shape

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "the README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    out = capsys.readouterr().out
    alpha = float(re.search(r"learned alpha ([0-9.]+)", out).group(1))
    assert 0.05 <= alpha <= 1.0
    assert "[0.632, 0.393, 0.283, 0.221]" in out


def test_readme_quickstart_commands_exist_in_makefile():
    makefile = (README.parent / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, flags=re.M) and re.search(r"^test:", makefile, flags=re.M)
    assert "make dist" in README.read_text(encoding="utf-8") and re.search(r"^dist:", makefile, flags=re.M)
    assert "make test" in (README.parent / ".ci" / "run").read_text()


def test_readme_demo_table_has_the_shape_train_prints(cli, tmp_path):
    """Same lines, words and columns as `modgap train` with no arguments prints (numbers aside);
    tests/test_package.py checks the same of the installed wheel."""
    code, out, err = cli("train", "--epochs", "1", "--out", str(tmp_path / "r"), *TINY, *NO_PROBE)
    assert code == 0, err
    assert table_shape(out) == table_shape(readme_demo_table())
