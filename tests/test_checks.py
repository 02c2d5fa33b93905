"""Argument checks of every op: a tensor in the wrong layout is blamed by name, whichever
argument it is, the first included; empty and negative sizes are refused by name."""
import dataclasses
import subprocess
import sys

import pytest
import torch

from ssmbench.impls.registry import OP_NAMES, get_op


def _inputs(op_name):
    op = get_op(op_name)
    return op, op.make_inputs(op.test_problems()[0], torch.Generator().manual_seed(0))


def _misplaced(kwargs):
    """(argument, the same tensor with two of its sizes swapped) for each tensor argument that
    has two different sizes."""
    for name, value in kwargs.items():
        if not isinstance(value, torch.Tensor) or value.dim() < 2:
            continue
        dims = [(i, j) for i in range(value.dim()) for j in range(i + 1, value.dim())
                if value.shape[i] != value.shape[j]]
        if dims:
            yield name, value.transpose(*dims[0]).contiguous()


LAYOUTS = [(op, name) for op in OP_NAMES for name, _ in _misplaced(_inputs(op)[1])]


@pytest.mark.parametrize("op_name,argument", LAYOUTS, ids=lambda v: v)
def test_an_argument_in_the_wrong_layout_is_the_one_blamed(op_name, argument):
    op, kwargs = _inputs(op_name)
    wrong = dict(_misplaced(kwargs))[argument]
    with pytest.raises(ValueError, match=rf"^{op_name}: argument '{argument}' must have shape"):
        op.problem_of({**kwargs, argument: wrong})


def test_the_first_argument_is_among_those_checked():
    assert ("selective_scan", "u") in LAYOUTS and ("ssd", "x") in LAYOUTS


EMPTY = [(op, field) for op in OP_NAMES for field in ("batch", "seqlen")
         if field in {f.name for f in dataclasses.fields(get_op(op).problem_type)}]


@pytest.mark.parametrize("op_name,field", EMPTY, ids=lambda v: v)
def test_an_empty_dimension_is_refused_by_name(op_name, field):
    op = get_op(op_name)
    problem = op.test_problems()[0].replace(**{field: 0})
    kwargs = op.make_inputs(problem, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=rf"^{op_name}: argument '\w+' has size 0 in dimension \w+"):
        op.problem_of(kwargs)


def test_the_public_function_refuses_an_empty_sequence():
    from ssmbench import selective_scan

    op, kwargs = _inputs("selective_scan")
    empty = {k: v[..., :0] if isinstance(v, torch.Tensor) and v.dim() >= 3 else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match="size 0 in dimension l"):
        selective_scan(**empty, backend="torch")


@pytest.mark.parametrize("value, message", [("-4", "must be a positive int, got -4"),
                                            ("0", "must be a positive int, got 0")])
def test_a_problem_refuses_negative_and_zero_sizes(value, message):
    with pytest.raises(ValueError, match=f"parameter 'seqlen' {message}"):
        get_op("selective_scan").problem_type.from_params({"seqlen": value})


def test_a_size_where_zero_means_as_another_accepts_zero():
    assert get_op("attention").problem_type.from_params({"seqlen_k": "0"}).seqlen_k == 0
    with pytest.raises(ValueError, match="'seqlen_k' must be an int >= 0, got -1"):
        get_op("attention").problem_type.from_params({"seqlen_k": "-1"})


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ssmbench.harness.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args, message", [
    (["compare", "--op", "selective_scan", "--shape", "batch"], "argument --shape: expected key=value"),
    (["compare", "--op", "selective_scan", "--shape", "seqlen=-4"], "'seqlen' must be a positive int, got -4"),
    (["compare", "--op", "selective_scan", "--budget", "-1"], "argument --budget: expected a positive float"),
    (["run", "--suite", "scaling", "--threads", "0"], "argument --threads: expected a positive int"),
])
def test_the_command_line_refuses_bad_sizes_in_one_line(args, message):
    done = _cli(*args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a CUDA GPU")
def test_compare_on_cuda_without_a_gpu_is_one_line():
    done = _cli("compare", "--op", "selective_scan", "--device", "cuda")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().endswith("sees none here") and len(done.stderr.strip().splitlines()) == 1
