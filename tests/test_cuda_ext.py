"""Our CUDA extension (compiled here with nvcc alone; built and run where there is a GPU) and the
reasons the third-party GPU adapters give when they cannot run."""
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
import torch

from ssmbench.harness.check import check
from ssmbench.impls import backends, get_op, reasons
from ssmbench.impls import base, third_party
from ssmbench.kernels.cuda import build

CUDA = torch.cuda.is_available()


def nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidate = os.path.join(home, "bin", "nvcc") if home else None
    return candidate if candidate and os.path.exists(candidate) else shutil.which("nvcc")


def test_kernels_compile_standalone_for_sm80_and_sm90(tmp_path):
    """The kernel sources need only CUDA headers: nvcc builds them with no torch in sight."""
    compiler = nvcc()
    if compiler is None:
        pytest.skip("nvcc not found (neither $CUDA_HOME/bin/nvcc nor on PATH)")
    jobs = {
        source: subprocess.Popen(
            [compiler, "-std=c++17", *build.NVCC_FLAGS, "-c", str(build.SOURCE_DIR / source),
             "-o", str(tmp_path / f"{source}.o"),
             "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for source in build.KERNEL_SOURCES
    }
    for source, job in jobs.items():
        output, _ = job.communicate(timeout=110)
        assert job.returncode == 0, f"nvcc failed on {source}:\n{output}"
        assert (tmp_path / f"{source}.o").stat().st_size > 0


def test_every_source_of_the_extension_exists():
    for source in build.SOURCES:
        assert (build.SOURCE_DIR / source).is_file(), source


def test_python_and_cuda_agree_on_the_largest_state():
    header = (build.SOURCE_DIR / "ssm_launch.h").read_text()
    assert f"constexpr int kMaxDState = {build.MAX_DSTATE};" in header


@pytest.mark.skipif(CUDA, reason="checks the CPU-only answer")
@pytest.mark.parametrize("op", ["selective_scan", "selective_state_update"])
def test_our_cuda_backends_say_they_need_a_gpu_and_build_nothing(op):
    try:
        backend = backends(op)["cuda"]
    except ModuleNotFoundError:
        pytest.skip(f"op {op} is not there yet")
    build._load.cache_clear()
    assert reasons(backend) == ("unavailable", ["needs a CUDA GPU; torch sees none"])
    assert build._load.cache_info().currsize == 0


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """A machine that claims a GPU and a toolchain, with the build's per-process memory cleared."""
    monkeypatch.setattr(build.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(build, "toolchain_reasons", lambda: [])
    monkeypatch.setattr(build, "build_directory", lambda: tmp_path)
    build._load.cache_clear()
    yield
    build._load.cache_clear()


def test_a_failed_build_is_the_reason_and_is_tried_once(fresh_build, monkeypatch):
    from torch.utils import cpp_extension

    calls = []

    def failing_load(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("Error building extension 'ssmbench_cuda': selective_scan.cu(12): error: boom")

    monkeypatch.setattr(cpp_extension, "load", failing_load)
    for _ in range(3):
        why = build.unavailable_reasons()
        assert len(why) == 1 and "failed to build" in why[0] and "error: boom" in why[0]
    assert len(calls) == 1
    with pytest.raises(RuntimeError, match="error: boom"):
        build.extension()
    assert sorted(os.path.basename(s) for s in calls[0]["sources"]) == sorted(build.SOURCES)


def test_a_long_build_log_is_cut_to_its_end(fresh_build, monkeypatch):
    from torch.utils import cpp_extension

    def failing_load(**kwargs):
        raise RuntimeError("x" * 10 * build.ERROR_CHARS + " the last line")

    monkeypatch.setattr(cpp_extension, "load", failing_load)
    (why,) = build.unavailable_reasons()
    assert why.endswith("the last line") and len(why) < 2 * build.ERROR_CHARS


def test_build_directory_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    directory = build.build_directory()
    assert directory.parent == tmp_path
    assert directory.name.startswith("ssmbench_cuda_sm80_sm90PTX_torch")
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    assert build.build_directory().parent == build.Path.home() / ".cache" / "ssmbench" / "torch_extensions"


def _mamba_triton(op: str):
    """Why mamba-ssm's Triton module behind ``op``'s adapter cannot load: it can where the
    package's own import fails (see ssmbench.impls.third_party)."""
    module = importlib.import_module(f"ssmbench.impls.{op}.mamba_ssm").MODULE
    return lambda: third_party.mamba_triton_failure(module)


def _imports(package: str):
    return lambda: base.import_failure(package)


# (op, backend, the name its reasons must mention, why it cannot load: empty when it can)
THIRD_PARTY = [
    ("selective_scan", "mamba_ssm", "mamba_ssm", _imports("mamba_ssm")),
    ("ssd", "mamba_ssm", "mamba_ssm", _mamba_triton("ssd")),
    ("ssd", "fla", "fla", _imports("fla")),
    ("selective_state_update", "mamba_ssm", "mamba_ssm", _mamba_triton("selective_state_update")),
    ("causal_conv1d", "causal_conv1d", "causal_conv1d", _imports("causal_conv1d")),
    ("causal_conv1d_update", "causal_conv1d", "causal_conv1d", _imports("causal_conv1d")),
    ("attention", "flash_attn", "flash_attn", _imports("flash_attn")),
    ("attention", "flash_attn3", "flash_attn_interface", _imports("flash_attn_interface")),
]


@pytest.mark.parametrize("op,name,package,failure", THIRD_PARTY, ids=[f"{o}-{n}" for o, n, _, _ in THIRD_PARTY])
def test_third_party_adapters_say_why_they_cannot_run(op, name, package, failure):
    backend = backends(op)[name]
    status, why = reasons(backend)
    if failure():
        assert status == "unavailable"
        assert any(package in reason for reason in why), why
    elif not CUDA:
        assert status == "unavailable" and "needs a CUDA GPU; torch sees none" in why
    else:
        pytest.skip(f"{package} loads and there is a GPU: the correctness tests run {name}")


def test_capability_reason_names_package_and_both_generations(monkeypatch):
    monkeypatch.setattr(third_party, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    (why,) = third_party.capability_failure("flash-attn 2", (8, 0))
    assert "flash-attn 2" in why and "8.0" in why and "Tesla T4 is 7.5" in why
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert third_party.capability_failure("flash-attn 3", (9, 0)) == []


@pytest.fixture
def broken_mamba_ssm(tmp_path, monkeypatch):
    """An installed mamba_ssm whose package import fails as it does without selective_scan_cuda,
    with one Triton module that imports on its own."""
    if importlib.util.find_spec("mamba_ssm") is not None:
        pytest.skip("the real mamba_ssm is installed; not shadowing it")
    package = tmp_path / "mamba_ssm"
    (package / "ops" / "triton").mkdir(parents=True)
    (package / "__init__.py").write_text("import selective_scan_cuda_absent_for_the_test\n")
    (package / "ops" / "__init__.py").write_text("")
    (package / "ops" / "triton" / "__init__.py").write_text("")
    (package / "ops" / "triton" / "ssd_combined.py").write_text(
        "from mamba_ssm.ops.triton.helper import VALUE\n")
    (package / "ops" / "triton" / "helper.py").write_text("VALUE = 42\n")

    def forget():
        for key in [k for k in sys.modules if k == "mamba_ssm" or k.startswith("mamba_ssm.")]:
            del sys.modules[key]
        base._import_error.cache_clear()
        third_party._mamba_triton.cache_clear()

    forget()
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    forget()


def test_mamba_triton_modules_load_when_the_package_import_fails(broken_mamba_ssm):
    (why,) = base.import_failure("mamba_ssm")
    assert "selective_scan_cuda_absent_for_the_test" in why
    assert third_party.mamba_triton_failure("ssd_combined") == []
    assert third_party.mamba_triton("ssd_combined").VALUE == 42
    (missing,) = third_party.mamba_triton_failure("no_such_module")
    assert "mamba_ssm.ops.triton.no_such_module" in missing


def test_mamba_triton_without_the_package_says_not_installed(monkeypatch):
    if importlib.util.find_spec("mamba_ssm") is not None:
        pytest.skip("mamba_ssm is installed")
    third_party._mamba_triton.cache_clear()
    assert third_party.mamba_triton_failure("ssd_combined") == ["mamba_ssm is not installed"]
    with pytest.raises(ImportError, match="not installed"):
        third_party.mamba_triton("ssd_combined")


gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU; torch sees none")


@gpu
def test_extension_builds_for_this_gpu():
    assert build.unavailable_reasons() == []
    assert hasattr(build.extension(), "selective_scan_fwd")


@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("shape", [
    dict(batch=1, dim=300, dstate=16, seqlen=1000),  # 4 segments of 256, the last partial
    dict(batch=2, dim=24, dstate=16, seqlen=3001, groups=2),  # few blocks: many segments
    dict(batch=2, dim=24, dstate=64, seqlen=130, groups=3),  # 16 lanes per channel
    dict(batch=2, dim=16, dstate=65, seqlen=70, groups=16),  # 8 states a lane; a group per channel
    dict(batch=1, dim=8, dstate=256, seqlen=100, groups=2),  # the largest state
])
def test_cuda_scan_on_large_and_odd_states(shape, dtype):
    op = get_op("selective_scan")
    problem = op.problem_type(device="cuda", dtype=dtype, return_last_state=True, **shape)
    result = check(backends("selective_scan")["cuda"], problem)
    assert result.passed, result.describe()


@gpu
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_cuda_state_update_writes_a_strided_state(state_dtype):
    ref = pytest.importorskip("ssmbench.impls.selective_state_update.reference").selective_state_update
    g = torch.Generator().manual_seed(0)
    b, h, p, n, groups = 3, 4, 8, 32, 2

    def rand(*s):
        return torch.randn(*s, generator=g).cuda()

    # The state is a slice of a larger cache: strided in every dimension but the last.
    cache = rand(b, h, p, n + 5).to(state_dtype)
    state = cache[..., 2:n + 2]
    x, z = rand(b, h, p).bfloat16(), rand(b, h, p).bfloat16()
    dt = (rand(b, h, 1) * 0.5).expand(b, h, p).bfloat16()  # Mamba-2's dt, broadcast over p
    A = -rand(h, 1, 1).abs().expand(h, p, n)
    B, C = rand(b, groups, n).bfloat16(), rand(b, groups, n).bfloat16()
    D, dt_bias = rand(h, p), rand(h, p) * 0.1
    expected_state = state.double().clone()
    expected = ref(expected_state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=True)
    before = cache.clone()
    out = backends("selective_state_update")["cuda"](
        state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, dt_softplus=True)
    torch.testing.assert_close(out.double(), expected.double(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(state.double(), expected_state, rtol=2e-2, atol=2e-2)
    # Outside the slice the cache is untouched.
    torch.testing.assert_close(cache[..., :2], before[..., :2], rtol=0, atol=0)
    torch.testing.assert_close(cache[..., n + 2:], before[..., n + 2:], rtol=0, atol=0)
