"""megatron_masklm.cpu: reading the CPU's flags, and the bf16 verdict from them."""
from megatron_masklm.cpu import cpu_flags, native_bf16, slow_bf16_note


def _cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
                    "flags\t\t: other\n")
    return str(path)


def test_flags_of_the_first_processor(tmp_path):
    assert cpu_flags(_cpuinfo(tmp_path, "fpu avx avx2 fma")) == {"fpu", "avx", "avx2", "fma"}
    assert cpu_flags(str(tmp_path / "missing")) is None
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd\n")
    assert cpu_flags(str(tmp_path / "arm")) is None


def test_bf16_needs_avx512_bf16_or_amx(tmp_path):
    assert native_bf16(cpu_flags(_cpuinfo(tmp_path, "avx avx2 fma"))) is False
    assert native_bf16(frozenset({"avx512f", "avx512bw"})) is False
    assert native_bf16(frozenset({"avx512f", "avx512_bf16"})) is True
    assert native_bf16(frozenset({"amx_bf16", "amx_tile"})) is True
    assert "avx512_bf16" in slow_bf16_note() and "--bf16" in slow_bf16_note()
