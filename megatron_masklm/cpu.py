"""Whether this machine's CPU has bf16 instructions: without them torch's bf16 matmuls run far
slower than fp32 ones, so ``--bf16`` would make a CPU run slower, not faster.

Measured on a 2-core AMD EPYC with AVX2 only (torch 2.13, one thread): a [1024 x 576] @
[576 x 1536] matmul took 0.053 s in fp32 and 2.81 s in bf16 (53x); the output layer of a
SmolLM2 distilled step (1024 tokens x 49,152) forward and backward 108 s in bf16. Machines with
AVX512-BF16 or AMX ran the same bf16 step faster than fp32 (benchmarks/smollm2_cpu/README.md).
"""
import os
from typing import FrozenSet, Optional

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""/proc/cpuinfo flags of the x86 instructions that make CPU bf16 matmuls fast."""


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> Optional[FrozenSet[str]]:
    """The first processor's flags (x86 Linux), or None where ``cpuinfo`` has none (other
    systems, other architectures)."""
    if not os.path.isfile(cpuinfo):
        return None
    with open(cpuinfo) as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                return frozenset(value.split())
    return None


def native_bf16(flags: Optional[FrozenSet[str]] = None) -> Optional[bool]:
    """True when the CPU has bf16 instructions, False when it is x86 without them, None when
    unknown (no x86 flags to read)."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return None
    return any(flag in flags for flag in BF16_FLAGS)


def slow_bf16_note() -> str:
    return (f"this CPU has none of {', '.join(BF16_FLAGS)}: torch's bf16 matmuls run tens of "
            "times slower than fp32 here (53x on an AVX2 EPYC), so drop --bf16 on it")
