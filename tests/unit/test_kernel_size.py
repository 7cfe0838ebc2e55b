"""Every device function of the CUDA sources stays short enough to hold in one's head: no body
longer than MAX_BODY_LINES (the GEMM kernel is split by role into named pieces)."""
import re
from pathlib import Path

KERNELS = Path(__file__).resolve().parents[2] / "kernels_src"
MAX_BODY_LINES = 250


def function_bodies(text: str) -> list[tuple[str, int, int]]:
    """(name, first line, body lines) of each __device__ / __global__ function defined in `text`;
    declarations (a signature ending in ';') are skipped."""
    lines = text.splitlines()
    found, i = [], 0
    while i < len(lines):
        if not re.search(r"\b__(device|global)__\b", lines[i]) or lines[i].lstrip().startswith("//"):
            i += 1
            continue
        start = next((j for j in range(i, len(lines)) if "{" in lines[j] or lines[j].rstrip().endswith(";")), None)
        if start is None or "{" not in lines[start]:
            i = (start or i) + 1
            continue
        depth, end = 0, start
        for end in range(start, len(lines)):
            depth += lines[end].count("{") - lines[end].count("}")
            if depth == 0:
                break
        name = re.findall(r"(\w+)\s*\(", " ".join(lines[i:start + 1]))
        found.append((next((n for n in name if n not in ("__launch_bounds__", "if", "for")), "?"), i + 1,
                      end - start + 1))
        i = end + 1
    return found


def test_no_device_function_body_is_long():
    bodies = {(path.relative_to(KERNELS).as_posix(), name, line): size
              for path in KERNELS.rglob("*.cuh") for name, line, size in function_bodies(path.read_text())}
    assert {"gemm_kernel_body", "consume_tiles", "store_tile", "produce_tiles"} <= {k[1] for k in bodies}
    assert {k: v for k, v in bodies.items() if v > MAX_BODY_LINES} == {}


def test_the_measure_counts_a_body_and_skips_declarations():
    body = "\n".join(["  x += 1;"] * 300)
    text = ("__device__ int declared(int x);\n"
            f"template <class T>\n__device__ __forceinline__ int\nlong_one(int x) {{\n{body}\n  return x;\n}}\n"
            "__global__ void short_one() { }\n")
    assert function_bodies(text) == [("long_one", 3, 303), ("short_one", 307, 1)]
