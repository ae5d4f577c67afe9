"""Stability monitors (SPEC §5): each metric against an independent recomputation, alarms, and no effect on training."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models.config import ModelConfig
from models.qwen3 import Qwen3
from moe.config import MoEConfig
from tests.conftest import tiny_overrides
from train.callbacks import Callback
from train.monitors import MonitorConfig, monitor_callbacks
from train.monitors import stats as S
from train.monitors.alarms import Alarms, SpikeDetector
from train.metrics import MetricsLogger
from train.monitors.collectors import ActivationCollector, ExpertLoad


def _tiny_model(seed: int = 0) -> Qwen3:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=64, hidden=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=48, max_seq_len=16,
                      residual_multiplier=0.5, decoder_sparse_step=2,
                      moe=MoEConfig(num_experts=4, top_k=2, expert_hidden=16, backend="loop"))
    model = Qwen3(cfg)
    with torch.no_grad():  # embeddings of std 1e-4 would make every statistic degenerate
        model.embed.weight.normal_()
    return model


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _lse(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[..., 0]


def _attn_reference(attn, x: torch.Tensor) -> tuple[np.ndarray, float]:
    """Per (b, head, query) LSE over keys j ≤ i of q·k/√d by an explicit masked matrix; and the max logit."""
    with torch.no_grad():
        q, k = attn.queries_keys(x)
    q, k = _np(q), _np(k)
    b, h, t, d = q.shape
    group = h // k.shape[1]
    lse = np.zeros((b, h, t))
    top = -np.inf
    for bi in range(b):
        for hi in range(h):
            s = q[bi, hi] @ k[bi, hi // group].T * attn.scale
            s[np.triu_indices(t, 1)] = -np.inf
            lse[bi, hi] = np.log(np.exp(s).sum(-1))
            top = max(top, s[np.isfinite(s)].max())
    return lse, top


def _outliers_reference(x: np.ndarray) -> dict[str, float]:
    x = x.reshape(-1, x.shape[-1])
    r = np.sqrt((x**2).mean())
    c = x - x.mean()
    return {"outlier_frac": float((np.abs(x) > 6 * r).mean()), "max_over_rms": float(np.abs(x).max() / r),
            "kurtosis": float((c**4).mean() / (c**2).mean() ** 2 - 3)}


def _outlier_pct_reference(x: np.ndarray) -> float:
    x = x.reshape(-1, x.shape[-1])
    mu, sd = x.mean(-1, keepdims=True), x.std(-1, keepdims=True)
    return float((np.abs(x - mu) > 5 * sd).mean() * 100)


def _router_reference(z: np.ndarray, k: int) -> dict[str, float]:
    """Router diagnostics from (N, E) logits by their definitions: entropy / ln E, k-th − (k+1)-th logit, near ties
    (gap ≤ 2⁻⁷·|larger|), and E·Σ f·P with f the top-k slot shares and P the mean softmax."""
    n, e = z.shape
    p = np.exp(z - _lse(z)[:, None])
    desc = -np.sort(-z, axis=1)
    gap = desc[:, k - 1] - desc[:, k]
    f = np.bincount(np.argsort(-z, axis=1, kind="stable")[:, :k].ravel(), minlength=e) / (n * k)
    return {"entropy": float(-(p * np.log(p)).sum(1).mean() / np.log(e)), "margin": float(gap.mean()),
            "near_tie": float((gap <= 2**-7 * np.maximum(abs(desc[:, k - 1]), abs(desc[:, k]))).mean()),
            "aux_over_min": float(e * (f * p.mean(0)).sum())}


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt((x**2).mean()))


def test_activation_metrics_equal_independent_recomputation() -> None:
    model = _tiny_model()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    col = ActivationCollector(model, sample_tokens=256)
    col.arm()
    with torch.no_grad():
        model(ids)
    assert not col.armed  # hooks removed when the forward returned
    got = {k: float(v) for k, v in col.take().items()}

    want: dict[str, float] = {}
    with torch.no_grad():
        h = model.embed(ids)
        for i, block in enumerate(model.layers):
            tag = f"layer_{i:02d}"
            m = block.residual_multiplier
            xa = block.input_norm(h)
            a = block.attn(xa) * m
            lse, top = _attn_reference(block.attn, xa)
            want[f"monitor/z_attn/{tag}"] = float((lse**2).mean())
            want[f"monitor/attn_logit_max/{tag}"] = top
            want[f"monitor/rms/attn/{tag}"] = _rms(_np(a))
            want[f"monitor/outlier_pct/attn/{tag}"] = _outlier_pct_reference(_np(a))
            h = h + a
            xm = block.post_attn_norm(h)
            for k, v in _outliers_reference(_np(xm)).items():
                want[f"monitor/{k}/mlp_in/{tag}"] = v
            if block.is_moe:
                y, routing = block.mlp(xm)
                router_lse = _lse(_np(routing.logits))
                want[f"monitor/z_router/{tag}"] = float((router_lse**2).mean())
                want[f"monitor/z_router_max/{tag}"] = float(router_lse.max())
                want.update({f"monitor/router/{k}/{tag}": v for k, v in _router_reference(
                    _np(xm.reshape(-1, xm.shape[-1]) @ block.mlp.router.weight.T), block.mlp.router.top_k).items()})
            else:
                y = block.mlp(xm)
            y = y * m
            want[f"monitor/rms/mlp/{tag}"] = _rms(_np(y))
            want[f"monitor/outlier_pct/mlp/{tag}"] = _outlier_pct_reference(_np(y))
            h = h + y
            want[f"monitor/rms/{tag}"] = _rms(_np(h))
            for k, v in _outliers_reference(_np(h)).items():
                want[f"monitor/{k}/resid/{tag}"] = v
        final = model.norm(h)
        want["monitor/rms/final"] = _rms(_np(final))
        out_lse = _lse(_np(model.lm_head(final)))
        want["monitor/z_logits_mean"] = float(out_lse.mean())
        want["monitor/z_logits_max"] = float(out_lse.max())
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


def test_attention_sample_uses_last_queries_of_first_sequences() -> None:
    model = _tiny_model()
    ids = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(2))
    col = ActivationCollector(model, sample_tokens=8)  # < T: one sequence, its last 8 queries over all keys
    col.arm()
    with torch.no_grad():
        model(ids)
        got = float(col.take()["monitor/z_attn/layer_00"])
        lse, _ = _attn_reference(model.layers[0].attn, model.layers[0].input_norm(model.embed(ids)))
    assert got == pytest.approx(float((lse[0, :, -8:] ** 2).mean()), rel=1e-5)


def test_outlier_statistics_see_an_injected_outlier() -> None:
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(3))
    x[5, 7] = 40.0
    got = {k: float(v) for k, v in S.activation_outliers(x).items()}
    want = _outliers_reference(x.double().numpy())
    assert got == pytest.approx(want, rel=1e-4)
    assert got["outlier_frac"] == pytest.approx(1 / x.numel()) and got["kurtosis"] > 10
    assert float(S.token_outlier_pct(x)) == pytest.approx(_outlier_pct_reference(x.double().numpy()))


def test_expert_load_window_counts_training_forwards_only() -> None:
    model = _tiny_model()
    load = ExpertLoad(model)
    total = torch.zeros(4)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for _ in range(3):
            total += model(torch.randint(0, 64, (2, 12), generator=gen)).routing[0].counts
        model.eval()
        model(torch.randint(0, 64, (2, 12), generator=gen))  # evaluation: not counted
    got = {k: float(v) for k, v in load.report().items()}
    c = total.double().numpy()
    assert [got[f"monitor/expert_tokens/layer_01/expert_{e:02d}"] for e in range(4)] == c.tolist()
    assert got["monitor/expert_load/max_mean/layer_01"] == pytest.approx(c.max() / c.mean())
    assert got["monitor/expert_load/maxvio/layer_01"] == pytest.approx((c.max() - c.mean()) / c.mean())
    assert got["monitor/expert_load/cv/layer_01"] == pytest.approx(c.std() / c.mean(), rel=1e-5)
    assert got["monitor/expert_load/dead/layer_01"] == float((c == 0).sum())
    assert got["monitor/expert_load/maxvio_mean"] == got["monitor/expert_load/maxvio/layer_01"]
    assert load.report() == {}  # the window restarts after each report
    dead = S.expert_load(torch.tensor([5.0, 0.0, 3.0, 0.0]))
    assert float(dead["dead"]) == 2 and float(dead["max_mean"]) == pytest.approx(2.5)


def test_expert_load_window_resumes_on_rank0_only() -> None:
    """A checkpoint keeps the window summed over ranks; rank 0 restores it and the other ranks start from zero, so
    the next (rank-summed) report counts every token once."""
    from train.distributed import DistEnv

    model = _tiny_model()
    state = {1: [3.0, 0.0, 5.0, 2.0]}
    for rank, expected in ((0, state[1]), (1, [0.0] * 4)):
        load = ExpertLoad(model, DistEnv(rank=rank, world_size=2))
        load.load_state_dict(state, torch.device("cpu"))
        assert load.state_dict() == {1: expected}
        load.close()


# ---------------------------------------------------------------------------------------------- router diagnostics


def test_router_entropy_and_margin_closed_forms() -> None:
    flat = {k: float(v) for k, v in S.router_stats(torch.zeros(3, 4), top_k=2).items()}
    assert flat == {"entropy": pytest.approx(1.0), "margin": 0.0, "near_tie": 1.0}  # uniform: all tied
    peaked = float(S.router_stats(torch.tensor([[10.0, 0.0, 0.0, 0.0]]), top_k=1)["entropy"])
    p = math.exp(10) / (math.exp(10) + 3)
    q = 1 / (math.exp(10) + 3)
    # fp32: log p of the top expert is 10 − logsumexp(z), each rounded at u·10 ≈ 6e-7 nats (÷ ln 4 normalised)
    assert peaked == pytest.approx(-(p * math.log(p) + 3 * q * math.log(q)) / math.log(4), abs=2 * 2**-24 * 10)
    z = torch.tensor([[3.0, 1.0, 0.5, -1.0], [2.0, 1.999, 0.0, -1.0]])
    got = S.router_stats(z, top_k=1)  # gaps 2.0 and 0.001; 0.001 < 2⁻⁷·2 is a near tie, 2.0 is not
    assert float(got["margin"]) == pytest.approx((2.0 + 0.001) / 2) and float(got["near_tie"]) == 0.5
    # the margin is between selection scores: logits + bias ([3, 1, 1.1, -1] → k=2 gap 1.1 − 1 = 0.1)
    biased = S.router_stats(z[:1], top_k=2, selection_bias=torch.tensor([0.0, 0.0, 0.6, 0.0]))
    assert float(biased["margin"]) == pytest.approx(0.1, abs=1e-6)
    assert set(S.router_stats(z, top_k=4)) == {"entropy"}  # k = E: no (k+1)-th expert, no margin


def test_aux_over_min_closed_forms() -> None:
    quarter = torch.full((4,), 0.25)
    assert float(S.aux_over_min(torch.tensor([4.0, 0, 0, 0]), quarter)) == pytest.approx(1.0)  # uniform P: 1
    probs = torch.tensor([0.1, 0.1, 0.4, 0.4])
    assert float(S.aux_over_min(torch.tensor([1.0, 1, 1, 1]), probs)) == pytest.approx(1.0)  # balanced load: 1
    # load on the experts with little probability: 4·(½·0.1 + ½·0.1) = 0.4 — the gamed case
    assert float(S.aux_over_min(torch.tensor([2.0, 2, 0, 0]), probs)) == pytest.approx(0.4)
    assert float(S.aux_over_min(torch.tensor([0.0, 0, 2, 2]), probs)) == pytest.approx(1.6)


def test_load_percentiles_and_topk_changes() -> None:
    counts = torch.tensor([0.0, 2.0, 4.0, 6.0, 8.0])  # shares of the mean 0, .5, 1, 1.5, 2
    got = S.expert_load(counts)
    want = np.percentile([0, 0.5, 1, 1.5, 2], [10, 50, 90])  # numpy's linear interpolation, as torch.quantile
    assert [float(got[f"p{p}"]) for p in (10, 50, 90)] == pytest.approx(want.tolist())
    before = torch.tensor([[0, 1], [2, 3], [1, 0]])
    after = torch.tensor([[1, 0], [2, 1], [1, 0]])  # token 0: same set reordered; token 1: changed
    assert float(S.topk_changed(before, after)) == pytest.approx(1 / 3)


def test_routing_churn_sees_swapped_experts_and_resumes() -> None:
    from train.monitors.collectors import RoutingChurn

    model = _tiny_model()
    probe = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(7))
    churn = RoutingChurn(model, probe)
    assert churn.measure(contextlib.nullcontext) == {}  # the first monitor step only records
    with torch.no_grad():
        sets = model(probe).routing[0].indices
        w = model.layers[1].mlp.router.weight
        w[[0, 1]] = w[[1, 0]].clone()  # experts 0 and 1 trade routers: a token changes iff it chose exactly one
    expected = ((sets == 0).any(-1) ^ (sets == 1).any(-1)).float().mean()
    resumed = RoutingChurn(model, probe)
    resumed.load_state_dict(churn.state_dict())
    got = churn.measure(contextlib.nullcontext)
    assert float(got["monitor/router/churn/layer_01"]) == pytest.approx(float(expected)) and float(expected) > 0
    assert resumed.measure(contextlib.nullcontext) == got
    assert model.training  # the probe ran in eval mode and restored the mode


def test_aux_below_min_alarm() -> None:
    alarms = Alarms(MonitorConfig(alarm_start=10))
    name = "monitor/router/aux_over_min/layer_01"
    assert alarms.check(5, {name: 0.5}) == []  # before alarm_start
    assert alarms.check(10, {name: 0.97}) == []
    (fired,) = alarms.check(20, {name: 0.9})
    assert (fired.alarm, fired.threshold, fired.below) == ("aux_below_min", 0.95, True)
    assert "0.9 < 0.95" in fired.message()
    assert alarms.check(30, {name: 1.2}) == [] and len(alarms.check(40, {name: 0.8})) == 1  # cleared, fires again
    assert Alarms(MonitorConfig(alarm_start=0, aux_below_min=0)).check(1, {name: 0.1}) == []  # 0 disables


# ---------------------------------------------------------------------------------------------------- alarms


def _smooth(n: int) -> list[float]:
    rng = np.random.default_rng(0)
    return [float(4 * math.exp(-i / 60) + 2 + 0.01 * rng.standard_normal()) for i in range(n)]


def test_spike_detector_quiet_on_smooth_curve_fires_on_spike() -> None:
    det = SpikeDetector(window=128, sigma=6.0, min_history=32)
    assert all(det.update(v) is None for v in _smooth(300))
    limit = det.update(5.0)
    assert limit is not None and limit < 5.0
    values = _smooth(300)[-128:]  # the window the spike was judged against
    assert limit == pytest.approx(np.mean(values) + 6 * np.std(values))


def test_threshold_and_growth_alarms_fire_once_until_cleared() -> None:
    alarms = Alarms(MonitorConfig(z_growth=10, rms_growth=4, outlier_frac=0.01, expert_max_mean=3, alarm_start=10))
    assert alarms.check(5, {"monitor/z_attn/layer_00": 0.01, "monitor/outlier_frac/resid/layer_00": 0.5}) == []
    assert alarms.check(10, {"monitor/z_attn/layer_00": 2.0, "monitor/rms/layer_00": 1.0,
                             "monitor/outlier_frac/resid/layer_00": 0.0,
                             "monitor/expert_load/max_mean/layer_01": 1.2}) == []
    fired = alarms.check(20, {"monitor/z_attn/layer_00": 25.0, "monitor/rms/layer_00": 3.0,
                              "monitor/outlier_frac/resid/layer_00": 0.02,
                              "monitor/expert_load/max_mean/layer_01": 3.5})
    assert {(a.alarm, a.metric, a.threshold) for a in fired} == {
        ("z_growth", "monitor/z_attn/layer_00", 20.0), ("outlier_frac", "monitor/outlier_frac/resid/layer_00", 0.01),
        ("expert_imbalance", "monitor/expert_load/max_mean/layer_01", 3.0)}
    assert alarms.check(30, {"monitor/z_attn/layer_00": 26.0}) == []  # still raised: no repeat
    assert alarms.check(40, {"monitor/z_attn/layer_00": 3.0}) == []  # cleared
    assert [a.alarm for a in alarms.check(50, {"monitor/z_attn/layer_00": 30.0})] == ["z_growth"]


def test_alarm_state_round_trips_for_exact_resume(tmp_path: Path) -> None:
    cfg = MonitorConfig(spike_min_history=8)
    curve = _smooth(100) + [20.0] + _smooth(50)
    straight = Alarms(cfg)
    want = [(a.step, a.alarm) for s, v in enumerate(curve) for a in straight.check(s, {"train/loss": v})]
    first = Alarms(cfg)
    for s, v in enumerate(curve[:60]):
        first.check(s, {"train/loss": v})
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = Alarms(cfg)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    got = [(a.step, a.alarm) for s, v in enumerate(curve) if s >= 60 for a in resumed.check(s, {"train/loss": v})]
    assert got == want == [(100, "loss_spike")]


class _FakeTrainer:
    """The trainer API the monitors call: stop requests and rollback points (train.loop.Trainer)."""

    def __init__(self, callbacks: list[Callback], logger: MetricsLogger) -> None:
        self.callbacks, self.logger, self.stop_reason = callbacks, logger, None
        self.rollback_marks: list[tuple[int, str]] = []
        self.roll_back: bool | None = None

    def request_stop(self, reason: str, roll_back: bool = False) -> None:
        self.stop_reason = self.stop_reason or reason
        self.roll_back = roll_back

    def mark_rollback(self, step: int, why: str) -> int | None:
        self.rollback_marks.append((step, why))
        return None


@pytest.mark.parametrize("on_alarm", ["warn", "stop"])
def test_alarm_is_printed_logged_and_stops_when_asked(tmp_path: Path, capsys, on_alarm: str) -> None:
    (cb,) = monitor_callbacks(MonitorConfig(every=0, on_alarm=on_alarm, spike_min_history=8))
    logger = MetricsLogger(tmp_path / "metrics.jsonl", every=1, last_step=100)
    trainer = _FakeTrainer([cb], logger)
    for step, v in enumerate(_smooth(40) + [50.0], start=1):
        cb.on_step_end(trainer, step, {"train/loss": v, "train/grad_norm": 1.0})
    logger.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["event"] == "alarm" and records[0]["alarm"] == "loss_spike"
    assert records[0]["step"] == 41 and records[0]["value"] == 50.0 and records[0]["threshold"] < 50
    assert "ALARM loss_spike" in capsys.readouterr().err
    assert (trainer.stop_reason is not None) == (on_alarm == "stop")
    assert trainer.rollback_marks == [(41, "loss_spike")]  # the checkpoint before the spike is kept as a way back
    assert trainer.roll_back == (True if on_alarm == "stop" else None)  # stopping on it sends --resume there


def test_an_early_warning_alarm_pins_the_checkpoint_before_it(tmp_path: Path) -> None:
    """Issue 26: a growth alarm, not only a loss spike, marks the rollback point (pinned before its step)."""
    (cb,) = monitor_callbacks(MonitorConfig(every=10, spike_sigma=0.0, alarm_start=10, z_growth=10.0))
    logger = MetricsLogger(tmp_path / "metrics.jsonl", every=1, last_step=100)
    trainer = _FakeTrainer([cb], logger)
    for step in range(10, 30, 2):  # z at 1.0 from step 10 (the baseline), 11.0 (> 10 × 1.0) from step 24
        cb.on_step_end(trainer, step, {"monitor/z_attn/layer_00": 11.0 if step >= 24 else 1.0})
    logger.close()
    assert trainer.rollback_marks == [(24, "z_growth")] and trainer.stop_reason is None


# ---------------------------------------------------------------------------------------------- in a real run


class _Recorder(Callback):
    """Runs after the monitor: recomputes group grad/weight norms and the update ratio independently."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.metrics: list[dict[str, float]] = []
        self.expected: list[dict[str, float]] = []
        self._before: dict[str, list[torch.Tensor]] = {}

    def on_before_optimizer_step(self, trainer, step):  # noqa: ANN001
        exp = {}
        for g in trainer.optimizer.param_groups:
            ps = g["params"]
            exp[f"monitor/grad_norm/{g['name']}"] = math.sqrt(sum(float(p.grad.double().square().sum()) for p in ps))
            exp[f"monitor/weight_norm/{g['name']}"] = math.sqrt(sum(float(p.detach().double().square().sum()) for p in ps))
            self._before[g["name"]] = [p.detach().double().clone() for p in ps]
        self.expected.append(exp)
        return {}

    def on_step_end(self, trainer, step, metrics):  # noqa: ANN001
        for g in trainer.optimizer.param_groups:
            old = self._before[g["name"]]
            delta = math.sqrt(sum(float((p.detach().double() - o).square().sum()) for p, o in zip(g["params"], old)))
            self.expected[-1][f"monitor/update_ratio/{g['name']}"] = delta / math.sqrt(
                sum(float(o.square().sum()) for o in old))
        self.losses.append(metrics["train/loss"])
        self.metrics.append(dict(metrics))


def _run(corpus: Path, tmp_path: Path, every: int) -> _Recorder:
    from train.build import build_components
    from train.callbacks import build_callbacks
    from train.config import load_config
    from train.loop import Trainer

    cfg = load_config("configs/tiny-dense.toml", tiny_overrides(
        corpus, tmp_path / "cache", moe=True, **{"train.max_steps": 4, "train.eval_every": 4,
                                                  "train.ckpt_every": 4, "monitor.every": every}))
    run_dir = tmp_path / f"run{every}"
    run_dir.mkdir()
    recorder = _Recorder()
    trainer = Trainer(cfg, run_dir, build_components(cfg), [*build_callbacks(cfg), recorder])
    trainer.fit()
    return recorder


def test_monitoring_does_not_change_training_and_optimizer_health_is_exact(text_corpus: Path, tmp_path: Path) -> None:
    watched, plain = _run(text_corpus, tmp_path, every=1), _run(text_corpus, tmp_path, every=0)
    assert watched.losses == plain.losses  # bit-identical
    assert not any(k.startswith("monitor/") for m in plain.metrics for k in m)
    for metrics, expected in zip(watched.metrics, watched.expected, strict=True):
        assert {"monitor/z_attn/layer_00", "monitor/rms/final", "monitor/expert_load/maxvio_mean"} <= set(metrics)
        assert set(expected) <= set(metrics)
        for name, value in expected.items():
            assert metrics[name] == pytest.approx(value, rel=1e-4), name
        assert metrics["monitor/sphere_norm_drift"] < 1e-5
        assert metrics["monitor/update_ratio/sphere"] > 0
        assert 0 < metrics["train/mfu"] < float("inf")  # MoE-aware MFU in every step's log (train.mfu)
    # the churn probe is routed from the first monitor step on; its change is reported from the second
    assert "monitor/router/churn/layer_00" not in watched.metrics[0]
    assert all(0 <= m["monitor/router/churn/layer_01"] <= 1 for m in watched.metrics[1:])
    # tokens per expert over a one-step window = that step's token slots: batch·seq_len·top_k per MoE layer
    m = watched.metrics[0]
    assert sum(v for k, v in m.items() if k.startswith("monitor/expert_tokens/layer_00/")) == 4 * 32 * 2
    logged = [json.loads(line) for line in (tmp_path / "run1" / "metrics.jsonl").read_text().splitlines()]
    assert sum("monitor/rms/final" in r for r in logged) == 4
