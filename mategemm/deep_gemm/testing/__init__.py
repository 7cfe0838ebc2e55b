"""DeepGEMM's `deep_gemm.testing`: what its test files import (numerics, filters, timing).

calc_diff is mategemm's (a NaN or inf gives inf, so it never passes a bound). The timers return
seconds per call like DeepGEMM's; bench_kineto reads kernel times from torch.profiler.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch

from mategemm.testing.numerics import calc_diff

__all__ = ["assert_bitwise_equal", "bench", "bench_kineto", "calc_diff", "count_bytes", "get_arch_major",
           "ignore_env", "test_filter"]

L2_FLUSH_BYTES = 8 << 30  # written before each timed call: no operand survives in L2


def count_bytes(*tensors) -> int:
    """Bytes of the tensors, nested tuples and lists included; None counts 0."""
    total = 0
    for t in tensors:
        if isinstance(t, (tuple, list)):
            total += count_bytes(*t)
        elif t is not None:
            total += t.numel() * t.element_size()
    return total


def assert_bitwise_equal(x: torch.Tensor, y: torch.Tensor, label: str = "") -> None:
    """Raise AssertionError naming the first differing element unless x and y are the same bytes."""
    what = f" ({label})" if label else ""
    if x.shape != y.shape or x.dtype != y.dtype:
        raise AssertionError(f"not comparable{what}: {x.dtype} {tuple(x.shape)} vs {y.dtype} {tuple(y.shape)}")
    xb, yb = x.contiguous().view(-1).view(torch.uint8), y.contiguous().view(-1).view(torch.uint8)
    differ = (xb != yb).nonzero()
    if differ.numel():
        byte = differ[0, 0].item()
        element = byte // x.element_size()
        where = tuple(int(i) for i in torch.unravel_index(torch.tensor(element), x.shape))
        raise AssertionError(f"bitwise mismatch{what}: {differ.shape[0]} of {xb.numel()} bytes differ; first at "
                             f"element {where}: {x.reshape(-1)[element].item()} vs {y.reshape(-1)[element].item()}")


def get_arch_major() -> int:
    return torch.cuda.get_device_capability()[0]


def test_filter(condition):
    """Run the decorated test only when condition() holds; otherwise print that it was filtered."""
    def decorate(func):
        @functools.wraps(func)
        def run(*args, **kwargs):
            if condition():
                return func(*args, **kwargs)
            print(f"{func.__name__}:\n > Filtered by {condition}\n")
        return run
    return decorate


test_filter.__test__ = False  # a decorator, not a pytest test


def ignore_env(name: str, condition):
    """Run the decorated function with environment variable `name` unset while condition() holds."""
    def decorate(func):
        @functools.wraps(func)
        def run(*args, **kwargs):
            if not condition():
                return func(*args, **kwargs)
            saved = os.environ.pop(name, None)
            try:
                return func(*args, **kwargs)
            finally:
                if saved is not None:
                    os.environ[name] = saved
        return run
    return decorate


def bench(fn, num_warmups: int = 5, num_tests: int = 10, high_precision: bool = False) -> float:
    """Seconds per call of fn, averaged over num_tests back-to-back calls after warm-up (L2 flushed
    once before; with high_precision a large matmul first keeps the host ahead of the GPU)."""
    torch.empty(256 << 20, dtype=torch.uint8, device="cuda").zero_()
    for _ in range(num_warmups):
        fn()
    if high_precision:
        x = torch.randn((8192, 8192), device="cuda")
        x @ x
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(num_tests):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / num_tests / 1e3


@contextlib.contextmanager
def _quiet(enabled: bool):
    """Silence the file descriptors 1 and 2 (the profiler writes to them from C++)."""
    if not enabled:
        yield
        return
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        try:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            with contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
                yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _kernel_times(run, trace_path: str | None = None) -> dict[str, tuple[float, int]]:
    """{kernel name: (total device seconds, launches)} of what run() launches, profiled."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
        run()
        torch.cuda.synchronize()
    if trace_path is not None:
        profiler.export_chrome_trace(trace_path)
    totals: dict[str, tuple[float, int]] = {}
    for event in profiler.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            seconds, count = totals.get(event.name, (0.0, 0))
            totals[event.name] = (seconds + event.time_range.elapsed_us() / 1e6, count + 1)
    return totals


def bench_kineto(fn, kernel_names, num_tests: int = 30, suppress_kineto_output: bool = False,
                 trace_path: str | None = None, flush_l2: bool = True, with_multiple_kernels: bool = False,
                 barrier=None):
    """Mean device seconds per launch of the kernels whose names contain each of kernel_names (a str,
    or a tuple for several), over num_tests calls of fn, each after an L2 flush.

    Kernels are matched by substring as DeepGEMM's are. Where mategemm names a kernel differently,
    the first name gets every kernel fn launched that no other name matches (its time per call), so
    the figure is never 0 for work that ran; the other names get 0. The flush's own kernels are
    never counted. trace_path: where to write the Chrome trace; with_multiple_kernels: accepted (several
    kernels matching one name are always averaged per launch).
    """
    if not isinstance(kernel_names, (str, tuple)):
        raise TypeError(f"kernel_names must be a str or a tuple of str, got {type(kernel_names).__name__}")
    names = (kernel_names,) if isinstance(kernel_names, str) else kernel_names
    if int(os.environ.get("DG_USE_NVIDIA_TOOLS", 0)):  # the profiler conflicts with Nsight and the sanitizer
        return (1,) * len(names) if isinstance(kernel_names, tuple) else 1
    flush = (lambda: torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda").zero_()) if flush_l2 else None

    def timed():
        for _ in range(num_tests):
            if flush:
                flush()
            if barrier is not None:
                torch.cuda._sleep(20_000_000)
                barrier()
            fn()

    fn()  # first call: compiles and checks outside the profile
    with _quiet(suppress_kineto_output):
        flush_kernels = set(_kernel_times(flush)) if flush else set()
        kernels = {k: v for k, v in _kernel_times(timed, trace_path).items() if k not in flush_kernels}
    times = []
    for name in names:
        hits = [v for k, v in kernels.items() if name in k]
        times.append(sum(s for s, _ in hits) / sum(c for _, c in hits) if hits else 0.0)
    if not times[0]:
        rest = [v for k, v in kernels.items() if not any(n in k for n in names[1:])]
        times[0] = sum(s for s, _ in rest) / num_tests
    return tuple(times) if isinstance(kernel_names, tuple) else times[0]
