"""Training infrastructure: schedule, optimizer groups, data sharding, checkpoints, metrics, the step."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from posttrain.training import checkpoint as ck
from posttrain.training.config import TrainConfig
from posttrain.training.metrics import MetricsLogger, read_metrics
from posttrain.training.optim import build_optimizer, build_scheduler, lr_at
from posttrain.training.sampler import StepSampler


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one thread, faster and reproducible


# --- schedule ------------------------------------------------------------------------------

def test_lr_at_matches_hand_computed_values():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    total = 10  # warmup steps 0..3, cosine over steps 4..9 (5 intervals)
    assert [lr_at(s, cfg, total) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, cfg, total) == pytest.approx(1.0)
    # step 6: progress 2/5, cos(0.4 pi) = 0.30901699
    assert lr_at(6, cfg, total) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + 0.30901699), abs=1e-8)
    assert lr_at(6, cfg, total) == pytest.approx(0.68905765, abs=1e-8)
    assert lr_at(9, cfg, total) == pytest.approx(0.1)  # last step sits on the floor
    assert lr_at(50, cfg, total) == pytest.approx(0.1)  # and stays there
    half = TrainConfig(lr=2.0, warmup_steps=0, min_lr_ratio=0.0)
    assert lr_at(5, half, 11) == pytest.approx(1.0)  # progress 5/10: 2 * (1 + cos(pi/2)) / 2


def test_scheduler_follows_lr_at_step_by_step():
    cfg = TrainConfig(lr=3e-3, warmup_steps=3, min_lr_ratio=0.2)
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total_steps=12)
    for step in range(12):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(step, cfg, 12), rel=1e-12)
        opt.step()
        sched.step()


def test_optimizer_skips_decay_on_biases_norms_and_frozen_params():
    from posttrain.models.tiny import tiny_llama

    model = tiny_llama(64, hidden_size=16, num_layers=1, num_heads=2)
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    opt = build_optimizer(model, TrainConfig(weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 2 for p in decay["params"])
    assert all("norm" in names[id(p)] for p in no_decay["params"])
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))  # tied embedding / lm_head counted once
    assert id(model.model.layers[0].mlp.up_proj.weight) not in grouped
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(grouped) == trainable


def test_optimizer_is_fused_on_cpu_and_steps_as_the_plain_adamw():
    from posttrain.models.tiny import tiny_llama

    cfg = TrainConfig(weight_decay=0.1, lr=1e-2)
    models = [tiny_llama(64, hidden_size=16, num_layers=1, num_heads=2, seed=0) for _ in range(2)]
    fused = build_optimizer(models[0], cfg)
    names, twins = {id(p): n for n, p in models[0].named_parameters()}, dict(models[1].named_parameters())
    plain = torch.optim.AdamW([{**g, "params": [twins[names[id(p)]] for p in g["params"]], "fused": False}
                               for g in fused.param_groups])  # the same groups and settings, not fused
    assert fused.defaults["fused"] and not plain.param_groups[0]["fused"]
    for step in range(3):
        for model, opt in zip(models, (fused, plain)):
            torch.manual_seed(step)
            for p in model.parameters():
                p.grad = torch.randn_like(p)
            opt.step()
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


# --- data order ----------------------------------------------------------------------------

def test_sampler_shards_are_disjoint_and_match_one_process():
    one = StepSampler(50, batch_size=8, grad_accum=1, seed=3)
    two = [StepSampler(50, batch_size=2, grad_accum=2, world_size=2, rank=r, seed=3) for r in range(2)]
    assert one.steps_per_epoch == 6 and one.dropped_per_epoch == 2
    for epoch in range(2):
        for index in range(one.steps_per_epoch):
            (whole,) = one.micro_batches(epoch, index)
            parts = [i for s in two for mb in s.micro_batches(epoch, index) for i in mb]
            assert sorted(parts) == sorted(whole) and len(set(parts)) == 8


def test_sampler_order_depends_only_on_seed_and_epoch():
    a = StepSampler(40, batch_size=4, seed=1)
    seen = [i for index in range(a.steps_per_epoch) for i in a.micro_batches(0, index)[0]]
    assert sorted(seen) == list(range(40))  # one epoch visits every example once
    assert a.micro_batches(0, 3) == StepSampler(40, batch_size=4, seed=1).micro_batches(0, 3)
    assert a.micro_batches(0, 3) != a.micro_batches(1, 3)
    assert a.micro_batches(0, 3) != StepSampler(40, batch_size=4, seed=2).micro_batches(0, 3)
    # Resuming from a position continues the very same sequence, across the epoch boundary.
    full = [(e, i, mb) for (e, i, mb), _ in zip(a.iterate(), range(25))]
    resumed = [(e, i, mb) for (e, i, mb), _ in zip(a.iterate(1, 2), range(13))]
    assert resumed == full[12:]


def test_sampler_refuses_too_little_data():
    with pytest.raises(ValueError, match="only 10 usable examples, but one optimizer step takes 16"):
        StepSampler(10, batch_size=4, grad_accum=2, world_size=2)


# --- checkpoints ---------------------------------------------------------------------------

def _tiny_setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))
    cfg = TrainConfig(lr=1e-2, warmup_steps=2)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total_steps=20)
    return model, opt, sched


def _train(model, opt, sched, steps):
    for _ in range(steps):
        loss = model(torch.randn(5, 4)).pow(2).mean()
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def test_checkpoint_round_trip_restores_everything(tmp_path):
    model, opt, sched = _tiny_setup()
    _train(model, opt, sched, 3)
    state = ck.TrainState(step=3, epoch=1, batch_in_epoch=2, extra={"kl_coef": 0.05})
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    path = ck.save_checkpoint(tmp_path, state, model, opt, sched, [ck.rng_state()], meta={"global_batch": 8})
    assert path.name == "step-000003"
    expected_draws = (random.random(), np.random.rand())
    _train(model, opt, sched, 2)  # its inputs come from the torch generator saved above
    expected_weights = [p.detach().clone() for p in model.parameters()]

    model2, opt2, sched2 = _tiny_setup(seed=1)  # different init: everything must come from the file
    loaded, payload, rngs = ck.load_checkpoint(path, model2, opt2, sched2)
    assert (loaded.step, loaded.epoch, loaded.batch_in_epoch, loaded.extra) == (3, 1, 2, {"kl_coef": 0.05})
    assert payload["global_batch"] == 8
    assert sched2.last_epoch == 3
    assert opt2.param_groups[0]["lr"] == pytest.approx(lr_at(3, TrainConfig(lr=1e-2, warmup_steps=2), 20))
    ck.set_rng_state(rngs[0])
    assert (random.random(), np.random.rand()) == expected_draws
    _train(model2, opt2, sched2, 2)
    for a, b in zip(model2.parameters(), expected_weights):
        assert torch.equal(a, b)


def test_checkpoint_with_tied_weights_round_trips(tmp_path):
    from posttrain.models.tiny import tiny_llama

    model = tiny_llama(64, hidden_size=16, num_layers=1, num_heads=2, seed=0)
    opt = build_optimizer(model, TrainConfig())
    sched = build_scheduler(opt, TrainConfig(), 10)
    path = ck.save_checkpoint(tmp_path, ck.TrainState(step=1), model, opt, sched, [ck.rng_state()])
    other = tiny_llama(64, hidden_size=16, num_layers=1, num_heads=2, seed=1)
    ck.load_checkpoint(path, other, build_optimizer(other, TrainConfig()))
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    assert other.lm_head.weight is other.model.embed_tokens.weight  # still tied


def test_interrupted_save_leaves_previous_checkpoint_and_is_cleaned(tmp_path, monkeypatch):
    model, opt, sched = _tiny_setup()
    good = ck.save_checkpoint(tmp_path, ck.TrainState(step=5), model, opt, sched, [ck.rng_state()])
    real_save = torch.save

    def dies_on_scheduler(obj, f, *a, **k):
        if str(f).endswith("scheduler.pt"):
            raise KeyboardInterrupt("killed mid-save")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", dies_on_scheduler)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(tmp_path, ck.TrainState(step=10), model, opt, sched, [ck.rng_state()])
    monkeypatch.undo()
    assert (tmp_path / ".tmp-step-000010").is_dir()  # the half-written folder is there...
    assert ck.latest_checkpoint(tmp_path) == good  # ...but never taken for a checkpoint
    assert ck.remove_partial(tmp_path) == [tmp_path / ".tmp-step-000010"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000005"]
    ck.load_checkpoint(good, *_tiny_setup())  # the good one still loads


def test_prune_keeps_the_newest(tmp_path):
    model, opt, sched = _tiny_setup()
    for step in (10, 20, 30, 40):
        ck.save_checkpoint(tmp_path, ck.TrainState(step=step), model, opt, sched, [ck.rng_state()])
    removed = ck.prune(tmp_path, keep=2)
    assert [p.name for p in removed] == ["step-000010", "step-000020"]
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [30, 40]
    assert ck.prune(tmp_path, keep=0) == []


# --- metrics -------------------------------------------------------------------------------

def test_metrics_resume_truncates_to_checkpoint_step(tmp_path):
    log = MetricsLogger(tmp_path)
    for step in range(1, 8):
        log.log(step, {"loss": torch.tensor(1.0 / step), "lr": 0.1})
    log.log(7, {"eval_loss": float("nan")})
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 8, "loss"')  # a kill in the middle of a write
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6, 7, 7]
    assert read_metrics(tmp_path / "metrics.jsonl")[-1]["eval_loss"] == "nan"
    MetricsLogger(tmp_path, resume_step=5).log(6, {"loss": 0.5})
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[-1]["loss"] == 0.5 and records[0]["loss"] == 1.0


def test_metrics_tensorboard_and_non_main(tmp_path):
    log = MetricsLogger(tmp_path / "main", tensorboard=True)
    log.log(1, {"loss": 2.0})
    log.close()
    assert list((tmp_path / "main" / "tensorboard").glob("events.out.tfevents.*"))
    MetricsLogger(tmp_path / "other", enabled=False).log(1, {"loss": 2.0})
    assert not (tmp_path / "other").exists()


# --- one optimizer step through accelerate -----------------------------------------------------

@dataclass
class _Cfg:
    train: TrainConfig = field(default_factory=TrainConfig)


def _masked_loss_sum(model, batch):
    """Sum of next-token losses over the positions marked in batch["mask"]."""
    ids, mask = batch["ids"], batch["mask"]
    logits = model(input_ids=ids).logits[:, :-1]
    token_loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    return (token_loss * mask[:, 1:].flatten()).sum(), {"targets": mask[:, 1:].sum().float()}


def _count(batch):
    return int(batch["mask"][:, 1:].sum())


def _run_steps(tmp_path, batch_size, grad_accum, data, steps=4):
    from posttrain.models.tiny import tiny_llama
    from posttrain.training.loop import setup_run, train_step

    train = TrainConfig(run_dir=str(tmp_path / f"b{batch_size}x{grad_accum}"), lr=1e-2, warmup_steps=1,
                        batch_size=batch_size, grad_accum=grad_accum, tensorboard=False, max_grad_norm=1.0)
    ctx = setup_run(_Cfg(train))
    model = tiny_llama(50, hidden_size=16, num_layers=1, num_heads=2, seed=0)
    opt = build_optimizer(model, train)
    sched = build_scheduler(opt, train, steps)
    model, opt = ctx.accelerator.prepare(model, opt)
    losses = []
    for step in range(steps):
        rows = slice(step * 8, step * 8 + 8)
        micro = [{k: v[rows][i:i + batch_size] for k, v in data.items()} for i in range(0, 8, batch_size)]
        result = train_step(ctx, model, opt, sched, micro, _masked_loss_sum, _count, step + 1)
        assert result.units == int(data["mask"][rows][:, 1:].sum())
        assert result.metrics["targets"] == pytest.approx(1.0)  # metric sums are per unit too
        losses.append(result.loss)
    return losses, [p.detach().clone() for p in model.parameters()]


def test_grad_accumulation_normalizes_by_tokens_of_the_whole_step(tmp_path):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (32, 12), generator=g)
    lengths = torch.randint(2, 13, (32,), generator=g)  # very uneven target counts per micro-batch
    data = {"ids": ids, "mask": torch.arange(12)[None, :] < lengths[:, None]}
    ref_losses, ref_weights = _run_steps(tmp_path, 8, 1, data)
    for batch_size, accum in ((2, 4), (4, 2)):
        losses, weights = _run_steps(tmp_path, batch_size, accum, data)
        np.testing.assert_allclose(losses, ref_losses, rtol=0, atol=1e-5)
        for a, b in zip(weights, ref_weights):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert len(set(ref_losses)) == len(ref_losses)  # the weights moved: losses differ step to step


def test_non_finite_loss_stops_before_the_update(tmp_path):
    from posttrain.models.tiny import tiny_llama
    from posttrain.training.loop import NonFiniteLossError, setup_run, train_step

    train = TrainConfig(run_dir=str(tmp_path / "nan"), tensorboard=False)
    ctx = setup_run(_Cfg(train))
    model = tiny_llama(50, hidden_size=16, num_layers=1, num_heads=2)
    opt = build_optimizer(model, train)
    sched = build_scheduler(opt, train, 10)
    model, opt = ctx.accelerator.prepare(model, opt)
    before = [p.detach().clone() for p in model.parameters()]
    batch = {"ids": torch.randint(0, 50, (2, 6)), "mask": torch.ones(2, 6, dtype=torch.bool)}

    def nan_loss(m, b):
        loss, metrics = _masked_loss_sum(m, b)
        return loss * float("nan"), metrics

    with pytest.raises(NonFiniteLossError, match=r"step 3: the loss is nan.*no checkpoint.*lower train.lr"):
        train_step(ctx, model, opt, sched, [batch], nan_loss, _count, step=3)
    for a, b in zip(model.parameters(), before):
        assert torch.equal(a, b)


# --- resume policy -------------------------------------------------------------------------

def _checkpointed_run(run_dir: Path, batch_size: int, resume: str = "auto"):
    from posttrain.training.loop import Checkpointer, setup_run

    train = TrainConfig(run_dir=str(run_dir), batch_size=batch_size, tensorboard=False, resume=resume)
    ctx = setup_run(_Cfg(train))
    model, opt, sched = _tiny_setup()
    model, opt = ctx.accelerator.prepare(model, opt)
    return ctx, Checkpointer(ctx, model, opt, sched)


def test_resume_policy_and_a_changed_global_batch(tmp_path):
    from posttrain.training.loop import TrainingError

    ctx, ckpt = _checkpointed_run(tmp_path, batch_size=4)
    assert ctx.resume_from is None and ckpt.restore() == ck.TrainState()
    assert ckpt.maybe_save(ck.TrainState(step=49)) is None  # not a multiple of save_every (50)
    saved = ckpt.maybe_save(ck.TrainState(step=50, epoch=2, batch_in_epoch=1))
    assert saved == tmp_path / "checkpoints" / "step-000050"
    assert ckpt.maybe_save(ck.TrainState(step=50), final=True) is None  # already there

    ctx, ckpt = _checkpointed_run(tmp_path, batch_size=4)
    assert ctx.resume_from == saved
    assert ckpt.restore() == ck.TrainState(step=50, epoch=2, batch_in_epoch=1)
    # A stale run_dir is not continued under other settings: setup_run names what changed ...
    with pytest.raises(TrainingError, match=r"another config .*train.batch_size: 4 -> 8.*new train.run_dir"):
        _checkpointed_run(tmp_path, batch_size=8)
    # ... and a checkpoint resumed by path into a run with another global batch fails on restore.
    with pytest.raises(TrainingError, match="global batch of 4 examples but this run has 8"):
        _checkpointed_run(tmp_path / "elsewhere", batch_size=8, resume=str(saved))[1].restore()
    with pytest.raises(TrainingError, match="resume=never but .* already holds checkpoints"):
        _checkpointed_run(tmp_path, batch_size=4, resume="never")
    with pytest.raises(TrainingError, match="no checkpoint there"):
        _checkpointed_run(tmp_path, batch_size=4, resume=str(tmp_path / "nowhere"))
    ctx, _ = _checkpointed_run(tmp_path / "other", batch_size=4, resume=str(saved))
    assert ctx.resume_from == saved
