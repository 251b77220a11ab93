"""The package as users install it: `python -m build` makes an sdist and, from it, a wheel that carry
the bundled data; the wheel installed in a fresh venv trains on that data; the version has one source.

Builds run without network (`--no-isolation`: setuptools and build come with the test extra). The
fresh venv gets the wheel with `--no-deps` and sees torch and the other dependencies through a .pth
file naming this interpreter's site-packages; it runs from a temporary folder with no PYTHONPATH, so
the modgap it imports is the wheel's, never the source tree's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, readme_demo_table, table_shape

from modgap import __version__ as VERSION

DATA = REPO / "modgap" / "data"


def data_files() -> dict[str, str]:
    """The bundled data and split lists in the source tree: path in the package -> SHA-256."""
    files = [*(DATA / "bundled").iterdir(), *(DATA / "splits").rglob("*")]
    return {
        f.relative_to(REPO).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in files
        if f.is_file() and "__pycache__" not in f.parts
    }


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run a command; on failure, the test fails with its last output lines."""
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
    assert proc.returncode == 0, f"{' '.join(map(str, argv))} exited {proc.returncode}:\n{tail}"
    return proc.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """`python -m build --no-isolation` of a clean copy of the source tree (what git tracks, plus files not
    yet added that it does not ignore): the sdist, then the wheel built from the unpacked sdist, so the
    wheel has only what the sdist carries. Not the tree itself: its modgap.egg-info (left by `pip install
    -e`) would carry old files into the sdist through SOURCES.txt, its build/ stale files into the wheel."""
    pytest.importorskip("build", reason="the test extra's `build` is not installed")
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO).split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():  # a tracked file deleted in the working tree is left out
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)], out)
    return out


def test_version_has_one_source():
    """pyproject.toml reads the version from modgap/__init__.py, and the CHANGELOG has its section."""
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^dynamic = \["version"\]$', pyproject, flags=re.M)
    assert re.search(r'^version = \{ ?attr = "modgap.__version__" ?\}$', pyproject, flags=re.M)
    assert not re.search(r'^version = "', pyproject, flags=re.M), "a second, literal version in pyproject.toml"
    init = (REPO / "modgap" / "__init__.py").read_text(encoding="utf-8")
    assert re.findall(r'^__version__ = "(.+)"$', init, flags=re.M) == [VERSION]  # a literal: read without torch
    assert re.search(rf"^## \[{re.escape(VERSION)}\]", (REPO / "CHANGELOG.md").read_text(encoding="utf-8"), re.M)


def test_sdist_carries_the_data_and_the_project_files(dist):
    [sdist] = dist.glob("*.tar.gz")
    assert sdist.name == f"modgap-{VERSION}.tar.gz"
    root = f"modgap-{VERSION}"
    with tarfile.open(sdist) as tar:
        names = set(tar.getnames())
        for name, digest in data_files().items():
            assert f"{root}/{name}" in names, f"{name} is not in the sdist"
            member = tar.extractfile(f"{root}/{name}")
            assert member is not None and hashlib.sha256(member.read()).hexdigest() == digest, name
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "modgap/__init__.py", "modgap/cli.py"):
        assert f"{root}/{name}" in names, f"{name} is not in the sdist"


def test_wheel_carries_the_data(dist):
    [wheel] = dist.glob("*.whl")
    assert wheel.name == f"modgap-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        for name, digest in data_files().items():
            assert name in names, f"{name} is not in the wheel"
            assert hashlib.sha256(whl.read(name)).hexdigest() == digest, name
        metadata = whl.read(f"modgap-{VERSION}.dist-info/METADATA").decode()
    assert f"\nVersion: {VERSION}\n" in metadata


def test_installed_wheel_trains_on_its_bundled_data(dist, tmp_path):
    [wheel] = dist.glob("*.whl")
    fresh, bin_dir = tmp_path / "fresh", tmp_path / "fresh" / "bin"
    # no PYTHONPATH: with the source tree on it, pip would find modgap "already installed" and python import it
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    run([sys.executable, "-m", "venv", str(fresh)], tmp_path, env)
    run([str(bin_dir / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp_path, env)
    # the dependencies (torch, numpy, ...) from this interpreter, after the fresh venv's own packages
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    fresh_site = Path(run([str(bin_dir / "python"), "-c", purelib], tmp_path, env).strip())
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (fresh_site / "modgap_test_deps.pth").write_text("".join(f"{p}\n" for p in ours))

    where = run([str(bin_dir / "python"), "-c", "import modgap; print(modgap.__file__)"], tmp_path, env)
    assert Path(where.strip()).resolve().is_relative_to(fresh.resolve()), f"modgap imported from {where.strip()}"

    assert run([str(bin_dir / "modgap"), "--version"], tmp_path, env).strip() == f"modgap {VERSION}"

    argv = [str(bin_dir / "modgap"), "train", "--epochs", "1", "--out", "RUN", "--quiet", "--set", "train.probe=false"]
    table = run(argv, tmp_path, env)
    assert table_shape(table) == table_shape(readme_demo_table()), table  # lfm-lb on mfeat (pix+fou)
    summary = json.loads((tmp_path / "RUN" / "summary.json").read_text())
    assert (summary["version"], summary["dataset"], summary["modalities"]) == (VERSION, "mfeat", ["pix", "fou"])
