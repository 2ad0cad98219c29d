"""Unified codebook (docs/paper.md §4.3): EMA step by hand, ST gradient, assignment, CMCM, commitment."""
import math

import pytest
import torch

from cmcr_lite.losses.codebook import UnifiedCodebook, cmcm_loss, perplexity


def _toy_codebook(decay=0.5, eps=0.1):
    """K=3, D=2 codebook in float64 with codes e0=(1,0), e1=(0,1), e2=(-1,0), counts (1,1,1)."""
    cb = UnifiedCodebook(num_codes=3, dim=2, decay=decay, commitment=0.25, eps=eps).double()
    codes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    cb.embedding.copy_(codes)
    cb.ema_weight.copy_(codes)
    cb.ema_count.fill_(1.0)
    return cb


# points p0 -> e0, p1 -> e1; pixels v0 -> e1, v1 -> e0 (pair i = (p_i, v_i)); e2 is never chosen
P = [[0.9, 0.1], [0.2, 0.8]]
V = [[0.1, 0.9], [0.7, 0.3]]


def _toy_feats(requires_grad=False):
    p = torch.tensor(P, dtype=torch.float64, requires_grad=requires_grad)
    v = torch.tensor(V, dtype=torch.float64, requires_grad=requires_grad)
    return p, v


def test_ema_update_matches_hand_computation():
    cb = _toy_codebook(decay=0.5, eps=0.1)
    p, v = _toy_feats()
    out = cb.train()(p, v)
    assert out["indices_points"].tolist() == [0, 1]
    assert out["indices_pixels"].tolist() == [1, 0]

    # --- point step (gamma = 0.5, eps = 0.1, K = 3)
    # counts: 0.5*(1,1,1) + 0.5*(1,1,0) = (1, 1, 0.5); n = 2.5
    # Laplace: (c + 0.1) / (2.5 + 0.3) * 2.5
    c1 = [(1.0 + 0.1) / 2.8 * 2.5, (1.0 + 0.1) / 2.8 * 2.5, (0.5 + 0.1) / 2.8 * 2.5]
    # weights: 0.5*W + 0.25*(sum of assigned points) + 0.25*(sum of their paired pixels)
    # code0: 0.5*(1,0) + 0.25*p0 + 0.25*v0 = (0.5 + 0.225 + 0.025, 0.025 + 0.225) = (0.75, 0.25)
    # code1: 0.5*(0,1) + 0.25*p1 + 0.25*v1 = (0.05 + 0.175, 0.5 + 0.2 + 0.075) = (0.225, 0.775)
    # code2: 0.5*(-1,0) = (-0.5, 0)
    w1 = [[0.75, 0.25], [0.225, 0.775], [-0.5, 0.0]]

    # --- pixel step
    # counts: 0.5*c1 + 0.5*(1,1,0) (pixel v1 -> code0, v0 -> code1)
    c2 = [0.5 * c1[0] + 0.5, 0.5 * c1[1] + 0.5, 0.5 * c1[2]]
    n2 = sum(c2)
    c2 = [(c + 0.1) / (n2 + 0.3) * n2 for c in c2]
    # code0: 0.5*(0.75,0.25) + 0.25*v1 + 0.25*p1 = (0.375 + 0.175 + 0.05, 0.125 + 0.075 + 0.2)
    # code1: 0.5*(0.225,0.775) + 0.25*v0 + 0.25*p0 = (0.1125 + 0.025 + 0.225, 0.3875 + 0.225 + 0.025)
    # code2: 0.5*(-0.5, 0)
    w2 = [[0.6, 0.4], [0.3625, 0.6375], [-0.25, 0.0]]
    own = {0: V[1], 1: V[0]}  # pixels assigned to codes 0 and 1
    paired = {0: P[1], 1: P[0]}  # their paired points
    for c in range(3):
        for d in range(2):
            step = 0.5 * w1[c][d] + 0.25 * own.get(c, [0, 0])[d] + 0.25 * paired.get(c, [0, 0])[d]
            assert step == pytest.approx(w2[c][d], abs=1e-12)

    emb = []
    for (wx, wy), c in zip(w2, c2):
        ex, ey = wx / c, wy / c
        norm = math.hypot(ex, ey)
        emb.append([ex / norm, ey / norm])

    torch.testing.assert_close(cb.ema_count, torch.tensor(c2, dtype=torch.float64))
    torch.testing.assert_close(cb.ema_weight, torch.tensor(w2, dtype=torch.float64))
    torch.testing.assert_close(cb.embedding, torch.tensor(emb, dtype=torch.float64))
    # spot-check one number fully by hand: code 0 -> (0.6, 0.4)/|.| = (0.83205, 0.55470)
    assert cb.embedding[0].tolist() == pytest.approx([0.8320502943, 0.5547001962], abs=1e-9)


def test_commitment_losses_match_hand_computation():
    cb = _toy_codebook()
    p, v = _toy_feats()
    out = cb.train()(p, v)  # losses use the codes from before the EMA update
    # p - q_p = (-0.1, 0.1), (0.2, -0.2) -> MSE 0.025 ; p - q_v = (0.9,-0.9), (-0.8,0.8) -> 0.725
    assert out["commit_points"].item() == pytest.approx(2 * 0.25 * 0.025 + 0.25 * 0.725, abs=1e-12)
    # v - q_v = (0.1,-0.1), (-0.3,0.3) -> 0.05 ; v - q_p = (-0.9,0.9), (0.7,-0.7) -> 0.65
    assert out["commit_pixels"].item() == pytest.approx(2 * 0.25 * 0.05 + 0.25 * 0.65, abs=1e-12)
    # ST outputs carry the pre-update codes
    assert out["quantized_points"].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert out["quantized_pixels"].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert out["counts_points"].tolist() == [1, 1, 0]
    assert out["perplexity_points"].item() == pytest.approx(2.0, rel=1e-6)


def test_commitment_gradient_flows_only_to_features():
    cb = _toy_codebook()
    p, v = _toy_feats(requires_grad=True)
    out = cb.eval()(p, v)
    (out["commit_points"] + out["commit_pixels"]).backward()
    # d/dp [2b MSE(p, q_p) + b MSE(p, q_v)] = (2b*2(p - q_p) + b*2(p - q_v)) / numel
    q_p = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    q_v = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    pd = p.detach()
    expected = (0.5 * 2 * (pd - q_p) + 0.25 * 2 * (pd - q_v)) / 4
    torch.testing.assert_close(p.grad, expected)


def test_no_ema_change_in_eval_mode():
    cb = _toy_codebook()
    before = {k: t.clone() for k, t in cb.state_dict().items()}
    p, v = _toy_feats()
    cb.eval()(p, v)
    for k, t in cb.state_dict().items():
        assert torch.equal(t, before[k]), k
    cb.train()(p, v)
    assert not torch.equal(cb.embedding, before["embedding"])


def test_codes_are_buffers_not_parameters():
    cb = UnifiedCodebook()
    assert list(cb.parameters()) == []
    sd = cb.state_dict()
    assert set(sd) == {"embedding", "ema_count", "ema_weight"}
    assert sd["embedding"].shape == (400, 64) and sd["ema_weight"].shape == (400, 64)
    assert sd["ema_count"].shape == (400,)
    torch.testing.assert_close(cb.embedding.norm(dim=1), torch.ones(400))
    # U(-1, 1) before normalisation: not all codes share one sign pattern
    assert (cb.embedding > 0).any() and (cb.embedding < 0).any()
    # a reloaded state reproduces the codes
    cb2 = UnifiedCodebook()
    cb2.load_state_dict(sd)
    assert torch.equal(cb2.embedding, cb.embedding)


def test_straight_through_gradient_is_identity():
    torch.manual_seed(0)
    cb = UnifiedCodebook(num_codes=16, dim=8)
    x = torch.randn(50, 8, requires_grad=True)
    w = torch.randn(50, 8)
    q, idx = cb.quantize(x)
    torch.testing.assert_close(q.detach(), cb.embedding[idx])
    (w * q).sum().backward()
    assert torch.equal(x.grad, w)


def test_nearest_code_matches_brute_force_and_chunking():
    g = torch.Generator().manual_seed(1)
    cb = UnifiedCodebook(num_codes=37, dim=5)
    x = torch.randn(1000, 5, generator=g)
    brute_d = ((x[:, None, :].double() - cb.embedding[None].double()) ** 2).sum(-1)  # (N, K)
    ref = brute_d.argmin(1)
    top2 = brute_d.topk(2, dim=1, largest=False).values
    clear = (top2[:, 1] - top2[:, 0]) > 1e-5  # ignore numerical near-ties
    assert clear.float().mean() > 0.99
    _, idx_full = cb.quantize(x, chunk_size=10_000)
    _, idx_chunk = cb.quantize(x, chunk_size=7)
    assert torch.equal(idx_full, idx_chunk)
    assert torch.equal(idx_full[clear], ref[clear])
    # empty input
    q0, i0 = cb.quantize(torch.zeros(0, 5))
    assert q0.shape == (0, 5) and i0.shape == (0,)


def _reference_cmcm(p, v, codes):
    """CMCM by loops: soft assignments, S, InfoNCE with diagonal positives (temperature 1)."""
    def soft(x):
        out = []
        for row in x:
            d = [math.sqrt(sum((a - b) ** 2 for a, b in zip(row, e))) for e in codes]
            z = sum(math.exp(-di) for di in d)
            out.append([math.exp(-di) / z for di in d])
        return out

    pp, pv = soft(p), soft(v)
    m, k = len(p), len(codes)
    s = [[sum(pp[i][c] * math.log(pv[j][c]) + pv[i][c] * math.log(pp[j][c]) for c in range(k))
          for j in range(m)] for i in range(m)]
    total = 0.0
    for i in range(m):
        mx = max(s[i])
        log_z = mx + math.log(sum(math.exp(x - mx) for x in s[i]))
        total -= s[i][i] - log_z
    return total / m


def test_cmcm_matches_loop_reference():
    g = torch.Generator().manual_seed(2)
    cb = UnifiedCodebook(num_codes=5, dim=3).double()
    p = torch.randn(6, 3, generator=g, dtype=torch.float64)
    v = p + 0.5 * torch.randn(6, 3, generator=g, dtype=torch.float64)
    out = cb.eval()(p, v)
    ref = _reference_cmcm(p.tolist(), v.tolist(), cb.embedding.tolist())
    assert out["cmcm"].item() == pytest.approx(ref, rel=1e-10)


def test_cmcm_small_when_assignments_agree():
    cb = UnifiedCodebook(num_codes=4, dim=4).double()
    cb.embedding.copy_(20.0 * torch.eye(4, dtype=torch.float64))  # far-apart codes: peaked P
    x = 20.0 * torch.eye(4, dtype=torch.float64)  # row i sits on code i
    agree = cb.eval()(x, x.clone())["cmcm"].item()
    shuffled = cb.eval()(x, x[[1, 2, 3, 0]])["cmcm"].item()
    assert agree < 1e-6
    assert shuffled > 10.0
    # a direct call on exactly equal uniform assignments gives log(M): nothing to match
    log_u = torch.full((5, 7), -math.log(7), dtype=torch.float64)
    assert cmcm_loss(log_u, log_u).item() == pytest.approx(math.log(5), rel=1e-12)


def test_cmcm_gradient_reaches_both_modalities_and_is_finite_on_codes():
    cb = UnifiedCodebook(num_codes=8, dim=4)
    p = cb.embedding[:3].clone().requires_grad_(True)  # features exactly on codes (distance 0)
    v = torch.randn(3, 4, requires_grad=True)
    cb.eval()(p, v)["cmcm"].backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(v.grad).all()
    assert p.grad.abs().sum() > 0 and v.grad.abs().sum() > 0


def test_perplexity_uniform_and_single_code():
    k = 10
    assert perplexity(torch.arange(k).repeat(3), k).item() == pytest.approx(k, rel=1e-6)
    assert perplexity(torch.full((20,), 4), k).item() == pytest.approx(1.0, rel=1e-6)


def test_dead_codes_and_opt_in_reset():
    cb = _toy_codebook(decay=0.5, eps=0.1)
    cb.ema_count.copy_(torch.tensor([1.0, 1e-4, 2.0], dtype=torch.float64))
    assert cb.dead_codes(1e-3).tolist() == [1]
    assert cb.dead_codes(1.5).tolist() == [0, 1]
    # default: no reset in forward even with a code that is never chosen
    assert cb.reset_dead_codes is False
    feats = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    reset = cb.reset_dead(feats, threshold=1e-3)
    assert reset.tolist() == [1]
    torch.testing.assert_close(cb.embedding[1], torch.tensor([0.6, 0.8], dtype=torch.float64))
    assert cb.ema_count[1].item() == pytest.approx(1e-3)


def test_empty_batch_and_shape_errors():
    cb = UnifiedCodebook(num_codes=4, dim=3)
    out = cb.train()(torch.zeros(0, 3), torch.zeros(0, 3))
    assert out["cmcm"].item() == 0.0 and out["indices_points"].shape == (0,)
    with pytest.raises(ValueError, match="paired"):
        cb(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        cb.quantize(torch.zeros(2, 4))


def test_ema_all_reduce_branch_single_process(tmp_path):
    """With torch.distributed initialised (gloo, world size 1), the averaged EMA equals the local one."""
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already initialised")
    ref = _toy_codebook()
    p, v = _toy_feats()
    ref.train()(p, v)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        cb = _toy_codebook()
        cb.train()(p, v)
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(cb.ema_weight, ref.ema_weight)
    torch.testing.assert_close(cb.ema_count, ref.ema_count)
    torch.testing.assert_close(cb.embedding, ref.embedding)
