"""mategemm.deep_gemm's indexer names on the CPU: DeepGEMM 2.6's fp8_fp4_ forms map onto mategemm's
functions (recorded, not launched), logits_dtype included; FP4 and varlen inputs raise
NotImplementedError naming SM100."""
import pytest
import torch

import mategemm.api
import mategemm.deep_gemm as dg

E4M3 = torch.float8_e4m3fn


@pytest.fixture
def recorded(monkeypatch):
    calls = []
    for name in ("fp8_mqa_logits", "fp8_paged_mqa_logits", "get_paged_mqa_logits_metadata"):
        monkeypatch.setattr(mategemm.api, name, lambda *args, _name=name: calls.append((_name, args)) or "logits")
    return calls


def test_prefill_name(recorded):
    q, kv, w = torch.zeros(7, 32, 128, dtype=E4M3), (torch.zeros(50, 128, dtype=E4M3), torch.ones(50)), torch.ones(7, 32)
    ks, ke = torch.zeros(7, dtype=torch.int32), torch.full((7,), 50, dtype=torch.int32)
    assert dg.fp8_fp4_mqa_logits((q, None), kv, w, ks, ke, clean_logits=False, max_seqlen_k=20) == "logits"
    assert recorded == [("fp8_mqa_logits", (q, kv, w, ks, ke, False, 20, torch.float32))]
    dg.fp8_fp4_mqa_logits(q, kv, w, ks, ke)  # a plain tensor q too; DeepGEMM's defaults
    assert recorded[-1][1][5:] == (True, 0, torch.float32)
    dg.fp8_fp4_mqa_logits((q, None), kv, w, ks, ke, False, 20, torch.bfloat16)
    assert recorded[-1] == ("fp8_mqa_logits", (q, kv, w, ks, ke, False, 20, torch.bfloat16))
    dg.fp8_fp4_mqa_logits(q, kv, w, ks, ke, logits_dtype=torch.bfloat16)
    assert recorded[-1][1][5:] == (True, 0, torch.bfloat16)
    with pytest.raises(NotImplementedError, match="FP4 q.*SM100"):
        dg.fp8_fp4_mqa_logits((q, torch.ones(7, 32)), kv, w, ks, ke)
    with pytest.raises(NotImplementedError, match="FP4 keys.*SM100"):
        dg.fp8_fp4_mqa_logits(q, (torch.zeros(50, 64, dtype=torch.int8), torch.ones(50)), w, ks, ke)
    with pytest.raises(TypeError, match="pair"):
        dg.fp8_fp4_mqa_logits((q,), kv, w, ks, ke)
    assert len(recorded) == 4


def test_paged_names(recorded):
    q = torch.zeros(4, 2, 64, 128, dtype=E4M3)
    cache, w = torch.zeros(10, 64, 1, 132, dtype=torch.uint8), torch.ones(8, 64)
    lens, table, meta = torch.ones(4, 2, dtype=torch.int32), torch.zeros(4, 3, dtype=torch.int32), torch.zeros(9, 2)
    kwargs = dict(q=(q, None), kv_cache=cache, weights=w, context_lens=lens, block_table=table, schedule_meta=meta,
                  max_context_len=192, clean_logits=False, logits_dtype=torch.float32, indices=None)
    assert dg.fp8_fp4_paged_mqa_logits(**kwargs) == "logits"
    assert recorded == [("fp8_paged_mqa_logits", (q, cache, w, lens, table, meta, 192, False, torch.float32))]
    dg.fp8_fp4_paged_mqa_logits(**{**kwargs, "logits_dtype": torch.bfloat16})
    assert recorded[-1] == ("fp8_paged_mqa_logits", (q, cache, w, lens, table, meta, 192, False, torch.bfloat16))
    dg.fp8_fp4_paged_mqa_logits(q, cache, w, lens, table, meta, 192)  # DeepGEMM's defaults
    assert recorded[-1][1][7:] == (False, torch.float32)
    with pytest.raises(NotImplementedError, match="varlen indices.*SM100"):
        dg.fp8_fp4_paged_mqa_logits(**{**kwargs, "indices": torch.zeros(4, dtype=torch.int32)})
    with pytest.raises(NotImplementedError, match="varlen indices.*SM100"):
        dg.get_paged_mqa_logits_metadata(lens, 64, 8, indices=torch.zeros(4, dtype=torch.int32))
    dg.get_paged_mqa_logits_metadata(lens, 64, 8)
    assert recorded[-1] == ("get_paged_mqa_logits_metadata", (lens, 64, 8))


@pytest.mark.parametrize("head_dim", (32, 64, 128))
@pytest.mark.parametrize("logits_dtype", (torch.float32, torch.bfloat16))
def test_deep_gemm_sm90_cases_reach_the_device_check(head_dim, logits_dtype):
    """Every argument combination of DeepGEMM's SM90 MQA tests passes mategemm's checks (CPU tensors stop
    at the device check; a rejected argument would be named instead)."""
    q = torch.zeros(8, 64, head_dim, dtype=E4M3)
    kv = (torch.zeros(40, head_dim, dtype=E4M3), torch.ones(40))
    ks, ke = torch.zeros(8, dtype=torch.int32), torch.full((8,), 40, dtype=torch.int32)
    for clean_logits, max_seqlen_k in ((True, 0), (False, 40)):
        with pytest.raises(ValueError, match="must be a CUDA tensor"):
            dg.fp8_fp4_mqa_logits((q, None), kv, torch.ones(8, 64), ks, ke, clean_logits, max_seqlen_k, logits_dtype)
    if head_dim != 128:
        return  # DeepGEMM's SM90 paged cases use 128 only
    for next_n in (1, 2):
        kwargs = dict(q=(torch.zeros(4, next_n, 32, 128, dtype=E4M3), None),
                      kv_cache=torch.zeros(10, 64, 1, 132, dtype=torch.uint8), weights=torch.ones(4 * next_n, 32),
                      context_lens=torch.full((4, next_n), 100, dtype=torch.int32),
                      block_table=torch.zeros(4, 3, dtype=torch.int32),
                      schedule_meta=torch.zeros(9, 2, dtype=torch.int32),
                      max_context_len=192, clean_logits=False, logits_dtype=logits_dtype, indices=None)
        with pytest.raises(ValueError, match="must be a CUDA tensor"):
            dg.fp8_fp4_paged_mqa_logits(**kwargs)
