"""SASS of a cubin through cuobjdump (from the nvidia-cuda-cuobjdump wheel), and its opcodes."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

# An instruction line: "/*0890*/   @!P0 STL.64 [R1+0x60], R4 ;" -> opcode "STL", modifiers ".64".
_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Za-z0-9_]+)*)")


def tools_dir() -> Path | None:
    """The folder holding cuobjdump (and the nvdisasm it needs): PATH first, then the nvidia wheels."""
    found = shutil.which("cuobjdump")
    if found:
        return Path(found).resolve().parent
    try:
        import nvidia
    except ImportError:
        return None
    for base in nvidia.__path__:
        for sub in ("cu13", "cuda_cuobjdump", "cu12"):
            candidate = Path(base) / sub / "bin"
            if (candidate / "cuobjdump").is_file():
                return candidate
    return None


def _cuobjdump(flag: str, cubin: Path | str, expect: str) -> str:
    folder = tools_dir()
    if folder is None:
        raise FileNotFoundError("cuobjdump not found: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm")
    env = dict(os.environ, PATH=f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run([str(folder / "cuobjdump"), flag, str(cubin)], env=env, capture_output=True, text=True)
    if done.returncode != 0 or expect not in done.stdout:
        raise RuntimeError(f"cuobjdump {flag} {cubin} failed (rc {done.returncode}):\n{done.stderr or done.stdout}")
    return done.stdout


def dump_sass(cubin: Path | str) -> str:
    """`cuobjdump --dump-sass` of a cubin file. Raises FileNotFoundError if cuobjdump is missing."""
    return _cuobjdump("--dump-sass", cubin, "Function")


def registers(cubin: Path | str) -> int:
    """The registers per thread a cubin's (one) kernel is launched with (`cuobjdump -res-usage`)."""
    return int(re.search(r"REG:(\d+)", _cuobjdump("-res-usage", cubin, "REG:")).group(1))


_KPARAM = re.compile(r"Ordinal\s*:\s*0x([0-9a-f]+)\s+Offset\s*:\s*0x([0-9a-f]+)\s+Size\s*:\s*0x([0-9a-f]+)")


def kernel_param_sizes(cubin: Path | str) -> list[int]:
    """Byte size of each kernel parameter, in declaration order (from the cubin's EIATTR_KPARAM_INFO)."""
    params = {int(o, 16): int(size, 16) for o, _, size in _KPARAM.findall(_cuobjdump("-elf", cubin, "KPARAM"))}
    return [params[i] for i in range(len(params))]


def opcodes(sass: str) -> list[str]:
    """Every instruction's opcode without modifiers, in order: 'QGMMA', 'UTMALDG', 'STL', ..."""
    return [m.group(1) for m in map(_INSTRUCTION.match, sass.splitlines()) if m]


def elected_tma_loads(sass: str) -> int:
    """TMA loads (UTMALDG) issued inside an election loop (ELECT a few instructions before, BRA.U.ANY
    after): what ptxas emits where it cannot tell that one thread of the warp is running alone."""
    ops = opcodes(sass)

    def elected(i: int) -> bool:  # an ELECT among the few instructions before, no branch between
        for op in reversed(ops[max(0, i - 4):i]):
            if op in ("ELECT", "BRA"):
                return op == "ELECT"
        return False

    return sum(1 for i, op in enumerate(ops) if op == "UTMALDG" and elected(i))


def main_loop_r2ur(sass: str) -> list[str]:
    """The R2UR moves from the first wgmma (QGMMA) to the last: a main loop whose wgmma descriptors
    left the uniform registers has one before every wgmma."""
    lines = [line for line in sass.splitlines() if line.strip()]
    mma = [i for i, line in enumerate(lines) if " QGMMA." in line]
    if not mma:
        raise ValueError("no wgmma (QGMMA) in the SASS")
    return [line for line in lines[mma[0]:mma[-1] + 1] if " R2UR " in line]
