"""What a checkpoint saves: the trainer state, one typed record written and read back whole, the
optimizer moments a new run can start from, and the room its checkpoints need on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from agentrl.config import ConfigError
from agentrl.training.checkpoint import MODEL_STATES, TrainerState, saved_optimizer_state
from agentrl.training.curriculum import CurriculumState
from agentrl.training.policy import carry_optimizer_moments


def test_trainer_state_round_trips_through_its_json_record():
    state = TrainerState(
        step=7,
        curriculum=CurriculumState(stage=2, steps_in_stage=3, window=[0.5, 0.75]),
        keep_group_fraction=0.25,
        guard_history=[{"train/zero_adv_group_fraction": 1.0}],
        warning=True,
    )
    record = json.loads(json.dumps(state.to_dict()))
    # The on-disk shape that runs already hold: step, stage, and the loop's state under "loop".
    assert record == {
        "step": 7,
        "stage": 2,
        "loop": {
            "curriculum": {"stage": 2, "steps_in_stage": 3, "window": [0.5, 0.75]},
            "keep_group_fraction": 0.25,
            "guard_history": [{"train/zero_adv_group_fraction": 1.0}],
            "warning": True,
        },
    }
    assert TrainerState.from_dict(record) == state


def test_a_record_without_loop_state_resumes_in_its_stage_with_a_fresh_loop():
    # An SFT checkpoint's record (and any written before the loop's state was saved).
    state = TrainerState.from_dict({"step": 4, "stage": 1, "loop": {}})
    assert state == TrainerState(step=4, curriculum=CurriculumState(stage=1))
    assert TrainerState.from_dict({"step": 2}) == TrainerState(step=2)


# ------------------------------------------------------------------------------------------------
# AdamW's moments carried from a checkpoint into a new run (train.init_optimizer_state)
# ------------------------------------------------------------------------------------------------


def _checkpoint_with_adam(root: Path, model: torch.nn.Module) -> tuple[Path, torch.optim.AdamW]:
    """A checkpoint folder laid out as DeepSpeed's ZeRO-0 save of ``model`` after two AdamW steps."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.ones(2, 3)).pow(2).sum().backward()
        optimizer.step()
    ckpt = root / "checkpoints" / "step_000002"
    (ckpt / "hf").mkdir(parents=True)
    (ckpt / "ds").mkdir()
    torch.save(
        {"module": model.state_dict(), "optimizer": optimizer.state_dict()}, ckpt / "ds" / MODEL_STATES
    )
    return ckpt / "hf", optimizer


def test_carried_state_is_the_saved_second_moments_and_steps_with_the_first_moments_at_zero(tmp_path):
    torch.manual_seed(0)
    hf, saved = _checkpoint_with_adam(tmp_path, torch.nn.Linear(3, 4))
    model = torch.nn.Linear(3, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.0)
    carry_optimizer_moments(optimizer, list(model.parameters()), str(hf))

    for i, p in enumerate(model.parameters()):
        carried, original = optimizer.state[p], saved.state[list(saved.param_groups[0]["params"])[i]]
        assert float(carried["step"]) == 2.0
        assert not carried["exp_avg"].any() and original["exp_avg"].any()  # the old momentum left behind
        assert torch.equal(carried["exp_avg_sq"], original["exp_avg_sq"])
    assert optimizer.param_groups[0]["lr"] == 5e-5 and optimizer.param_groups[0]["weight_decay"] == 0.0

    # The next step is AdamW's third: the first moment is 0.1 g (nothing of the old momentum), the
    # second folds g into the carried one, both bias-corrected at step 3.
    p = model.bias
    before = p.detach().clone()
    g = torch.tensor([0.5, -0.25, 1e-4, 0.0])
    m = 0.1 * g
    v = 0.999 * optimizer.state[p]["exp_avg_sq"] + 0.001 * g * g
    expected = before - 5e-5 * (m / (1 - 0.9**3)) / ((v / (1 - 0.999**3)).sqrt() + 1e-8)
    optimizer.zero_grad()
    for q in model.parameters():
        q.grad = torch.zeros_like(q)
    p.grad = g
    optimizer.step()
    assert not torch.equal(p.detach(), before)
    assert torch.allclose(p.detach(), expected, rtol=0, atol=1e-9)


def test_carrying_moments_of_another_model_or_from_no_checkpoint_is_refused(tmp_path):
    hf, _ = _checkpoint_with_adam(tmp_path, torch.nn.Linear(3, 4))
    other = torch.nn.Linear(3, 5)
    optimizer = torch.optim.AdamW(other.parameters(), lr=1e-5)
    with pytest.raises(ConfigError, match="of another model.*init_optimizer_state=false"):
        carry_optimizer_moments(optimizer, list(other.parameters()), str(hf))
    assert not optimizer.state  # nothing half-loaded

    plain = tmp_path / "plain_hf_folder"
    plain.mkdir()
    assert saved_optimizer_state(plain) is None
    with pytest.raises(ConfigError, match="no single-process optimizer state.*init_optimizer_state=false"):
        carry_optimizer_moments(optimizer, list(other.parameters()), str(plain))


@pytest.mark.parametrize(
    ("steps", "save_every", "keep", "expected"),
    [
        (4, 4, 2, 1),  # the main job's RL: one save, at step 4
        (10, 3, 2, 3),  # saves at 3, 6, 9, 10: two kept and the one being written
        (10, 3, 0, 4),  # keep all
        (10, 0, 2, 1),  # only at the end
        (10, 5, 1, 2),
    ],
)
def test_checkpoints_at_once_counts_the_saves_a_run_holds_at_its_fullest(steps, save_every, keep, expected):
    from agentrl.config import load_config
    from agentrl.training.run import checkpoints_at_once

    cfg = load_config(
        env="sokoban", overrides=[f"run.save_every={save_every}", f"run.keep_checkpoints={keep}"]
    )
    assert checkpoints_at_once(cfg, steps) == expected


def test_checkpoint_size_is_counted_from_the_model_headers(tmp_path, tiny_model):
    from agentrl.config import load_config
    from agentrl.models import tiny_model_dir
    from agentrl.training.run import checkpoint_gb

    params = sum(p.numel() for p in tiny_model.parameters())
    # The export copies the folder's other files (config, tokenizer) as they are.
    others = sum(f.stat().st_size for f in tiny_model_dir().iterdir() if f.suffix != ".safetensors")
    # Per parameter: the export and DeepSpeed's weights (4 + 4 in float32, 2 + 2 in bf16), AdamW's
    # float32 moments (8) and, where DeepSpeed keeps one, a float32 master copy (4); LoRA: the two copies.
    cases = {
        ("float32", "train.zero_stage=0"): 4 + 4 + 8,
        ("float32", "train.zero_stage=2"): 4 + 4 + 4 + 8,
        ("float32", "model.lora.r=8"): 4 + 4,
        ("bfloat16", "train.zero_stage=0"): 2 + 2 + 4 + 8,
        ("bfloat16", "train.zero_stage=2"): 2 + 2 + 4 + 8,
        ("bfloat16", "model.lora.r=8"): 2 + 2,
    }
    for (dtype, kind), per_param in cases.items():
        cfg = load_config(env="sokoban", model="tiny-random", overrides=[f"model.dtype={dtype}", kind])
        assert checkpoint_gb(cfg) == pytest.approx((params * per_param + others) / 1e9)
    # A folder with no safetensors (weights in .bin files, say): no estimate, no check.
    (tmp_path / "config.json").write_text("{}")
    assert checkpoint_gb(load_config(env="sokoban", model=str(tmp_path))) is None


@pytest.mark.parametrize(("checkpoints", "fewer_kept"), [(3, True), (2, False)])
def test_a_run_that_cannot_fit_its_checkpoints_fails_naming_size_room_and_fixes(
    monkeypatch, tmp_path, checkpoints, fewer_kept
):
    import shutil
    from types import SimpleNamespace

    from agentrl.config import load_config
    from agentrl.training.run import DISK_MARGIN, check_disk_space, checkpoint_gb

    cfg = load_config(
        env="sokoban", model="tiny-random", overrides=[f"run.root={tmp_path / 'runs' / 'deep'}"]
    )
    size = checkpoint_gb(cfg)
    free = (checkpoints - 0.5) * size * DISK_MARGIN
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=free * 1e9))
    check_disk_space(cfg, checkpoints - 1, "fits")
    with pytest.raises(ConfigError) as err:
        check_disk_space(cfg, checkpoints, "what they are")
    message = str(err.value)
    need = checkpoints * size * DISK_MARGIN
    assert (
        f"needs about {need:.1f} GB for its checkpoints ({checkpoints} x {size:.1f} GB: what they are;"
        in message
    )
    assert f"under {tmp_path / 'runs' / 'deep'}, and {free:.1f} GB are free there" in message
    assert "--set run.root=DIR" in message
    # Keeping fewer helps only where more than the 2 that run.keep_checkpoints=1 holds are kept.
    assert ("run.keep_checkpoints=1" in message) is fewer_kept
    assert not (tmp_path / "runs").exists()


def test_momentum_drift_moves_weights_by_the_saved_momentum_alone(load_script):
    """scripts/momentum_drift.py: zero-gradient AdamW steps from a saved state move a weight by
    lr * m_hat / (sqrt(v_hat) + eps), with m and v decaying by beta1 and beta2 each step."""
    script = load_script("momentum_drift")
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0]]))
    m0, v0 = torch.tensor([[0.02, -0.01]]), torch.tensor([[4e-4, 1e-4]])
    saved = {"state": {0: {"step": torch.tensor(30.0), "exp_avg": m0.clone(), "exp_avg_sq": v0.clone()}}}
    expected = model.weight.detach().clone()
    for k in (1, 2):
        m, v = 0.9**k * m0, 0.999**k * v0
        expected -= 1e-3 * (m / (1 - 0.9 ** (30 + k))) / ((v / (1 - 0.999 ** (30 + k))).sqrt() + 1e-8)
    change = script.drift(model, saved, steps=2, lr=1e-3)
    assert torch.allclose(model.weight.detach(), expected, atol=1e-9)
    assert change == pytest.approx(float((expected - torch.tensor([[1.0, -1.0]])).norm()), rel=1e-5)
    assert torch.equal(saved["state"][0]["exp_avg"], m0)  # the saved state is not touched
    with pytest.raises(ValueError, match=r"another model \(parameter 0: \(1, 3\)\)"):
        script.drift(torch.nn.Linear(3, 1, bias=False), saved, steps=1, lr=1e-3)


def test_a_zero3_checkpoint_exports_whole_weights(tmp_path, tiny_model):
    """ZeRO-3 leaves each rank its shard and the module's own tensors empty: the checkpoint's ``hf/``
    folder (what ``agentrl eval --model`` and ``--init`` load) must hold the whole weights, as the
    tiny model's on disk are before any step (not 0-element tensors)."""
    from safetensors.torch import load_file

    from agentrl.config import load_config
    from agentrl.training.checkpoint import save_checkpoint
    from agentrl.training.distributed import init_distributed
    from agentrl.training.policy import build_policy

    init_distributed("cpu")
    cfg = load_config(
        env="sokoban", model="tiny-random", overrides=["engine.name=vllm", "train.zero_stage=3"]
    )
    policy = build_policy(cfg, torch.device("cpu"))
    assert all(p.numel() == 0 for p in policy.model.parameters())  # sharded: the premise
    saved = save_checkpoint(tmp_path, TrainerState(step=1), policy.ds_engine, policy.model, policy.tokenizer)
    exported = load_file(saved / "hf" / "model.safetensors")
    original = tiny_model.state_dict()
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor.float(), original[name].float())
