"""The trainer state a checkpoint saves: one typed record, written and read back whole."""

from __future__ import annotations

import json

from agentrl.training.checkpoint import TrainerState
from agentrl.training.curriculum import CurriculumState


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
