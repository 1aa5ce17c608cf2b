"""Device and precision choices."""
import pytest
import torch

from napari_unet.engine.runtime import cpu_has_fast_bf16


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, True), (False, True, True),
                                                         (False, False, False)])
def test_cpu_bf16_detection_reads_the_cpu_probes(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16,
                        raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert cpu_has_fast_bf16() is expected


def test_cpu_bf16_detection_survives_a_torch_without_probes(monkeypatch):
    def broken():
        raise RuntimeError("no cpuinfo")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", broken, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    assert cpu_has_fast_bf16() is False
