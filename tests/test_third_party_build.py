"""The CPU half of building mamba-ssm's and causal-conv1d's kernels: the plan of a dry run, the
one-architecture patch of their setup.py, the time box and the reason a backend then shows."""
import io
import tarfile
import textwrap

import pytest

from ssmbench.harness import third_party_build as tpb
from ssmbench.impls.base import Backend

# The shape of the flags in both packages' setup.py (mamba-ssm 2.3.2, causal-conv1d 1.7.0).
SETUP_FLAGS = '''
cc_flag = []
if True:
    cc_flag.append("-gencode")
    cc_flag.append("arch=compute_75,code=sm_75")
    cc_flag.append("-gencode")
    cc_flag.append("arch=compute_80,code=sm_80")
    if bare_metal_version >= Version("11.8"):
        cc_flag.append("-gencode")
        cc_flag.append("arch=compute_90,code=sm_90")
'''

# A package whose CUDA build takes longer than any time box, and whose Python part installs.
SLOW_SETUP = '''
import os, time
from setuptools import setup
if os.environ.get("CAUSAL_CONV1D_SKIP_CUDA_BUILD") != "TRUE":
    time.sleep(600)
setup(name="causal_conv1d", version="0.0.1", packages=["causal_conv1d"])
'''


def sdist(folder, name, setup_py):
    """A source distribution holding only setup.py and an empty package."""
    path = folder / f"{name}-0.0.1.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for member, text in ((f"{name}-0.0.1/setup.py", setup_py + SETUP_FLAGS.replace("if True", "if False")),
                             (f"{name}-0.0.1/{name}/__init__.py", "")):
            data = text.encode()
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_setup_py_loses_every_arch_flag_and_stays_python():
    text, removed = tpb.one_arch(SETUP_FLAGS)
    assert removed == 3
    assert "gencode" not in text and "arch=compute" not in text
    compile(text, "setup.py", "exec")


def test_dry_run_prints_the_arch_the_commands_and_the_time_box(tmp_path, capsys):
    sdists = tmp_path / "sdists"
    sdists.mkdir()
    sdist(sdists, "mamba_ssm", "")
    prefix = tmp_path / "prefix"
    assert tpb.main(["--sdists", str(sdists), "--prefix", str(prefix), "--arch", "9.0", "--jobs", "16",
                     "--timeout", "200", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "TORCH_CUDA_ARCH_LIST=9.0" in out and "within 200 s" in out
    assert "MAMBA_FORCE_BUILD=TRUE TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=12" in out
    assert "--no-build-isolation" in out
    assert "causal-conv1d: no source distribution found" in out
    assert not prefix.exists()  # nothing built


def test_bad_arguments_name_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tpb.main(["--sdists", str(tmp_path / "absent"), "--arch", "9.0", "--dry-run"])
    assert "--sdists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tpb.main(["--sdists", str(tmp_path), "--arch", "sm90", "--dry-run"])
    assert "--arch" in capsys.readouterr().err


def test_a_build_past_its_time_is_stopped_and_its_reason_shown(tmp_path, monkeypatch):
    sdists = tmp_path / "sdists"
    sdists.mkdir()
    path = sdist(sdists, "causal_conv1d", textwrap.dedent(SLOW_SETUP))
    reasons = tmp_path / "reasons"
    reasons.mkdir()
    package = next(p for p in tpb.PACKAGES if p.module == "causal_conv1d")
    build = tpb.run(tpb.Build(package, path, "9.0", 1, 8.0, tmp_path / "prefix"), reasons)
    assert build.status == "timed out", build.log
    assert (tmp_path / "prefix" / "python" / "causal_conv1d" / "__init__.py").is_file()  # the Python part
    assert not (tmp_path / "prefix" / "cuda").exists()
    note = (reasons / "causal_conv1d.txt").read_text()
    assert "did not finish within its 8 s" in note

    # A backend that needs the package says why, with the build's line.
    (reasons / "no_such_package.txt").write_text(note)
    monkeypatch.setenv("SSMBENCH_BUILD_REASONS", str(reasons))
    backend = Backend(op="causal_conv1d", name="x", impl="x:y", requires=("no_such_package",))
    [why] = backend.unavailable_reasons()
    assert why.startswith("no_such_package is not installed; ") and "did not finish within its 8 s" in why
