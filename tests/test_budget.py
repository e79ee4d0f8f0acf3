"""The time budget's arithmetic, on a clock the test sets (hand-computed seconds)."""

from __future__ import annotations

from agentrl.training.budget import TimeBudget


def test_another_step_fits_while_it_and_its_evaluation_end_inside_the_budget():
    now = [300.0]
    budget = TimeBudget(10, started=0.0, clock=lambda: now[0])  # 600 s
    budget.step_done(100.0)
    budget.step_done(120.0)  # the longest so far counts
    budget.step_done(90.0)
    budget.evaluated(60.0)
    assert budget.longest_step_s == 120.0 and budget.elapsed_min() == 5.0
    # 300 + 120 + 60 = 480 <= 600; with this step's evaluation first, 540 <= 600
    assert budget.fits_another_step(eval_due_now=False) and budget.fits_another_step(eval_due_now=True)
    now[0] = 400.0
    # 400 + 120 + 60 = 580 fits; 400 + 60 + 120 + 60 = 640 does not
    assert budget.fits_another_step(eval_due_now=False)
    assert not budget.fits_another_step(eval_due_now=True)
    now[0] = 420.0  # exactly 600 without an evaluation now: still fits
    assert budget.fits_another_step(eval_due_now=False)
    now[0] = 420.5
    assert not budget.fits_another_step(eval_due_now=False)
    assert budget.stop_note(3, 8) == (
        "agentrl: RL ends at step 3 of 8: another step (up to 2.0 min) and its evaluation (1.0 min) would "
        "end past run.time_budget_min=10 (7.0 min so far); --resume continues, its budget counted afresh"
    )


def test_no_budget_fits_every_step():
    budget = TimeBudget(None, started=0.0, clock=lambda: 1e9)
    budget.step_done(1e6)
    assert budget.fits_another_step(eval_due_now=True)
