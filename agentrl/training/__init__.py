"""Stages 4 and 5, the update and the run folder, and the loop that steers every stage.

- :mod:`~agentrl.training.trainer`: ``train(cfg)``, the RL loop as named phases;
- :mod:`~agentrl.training.sft`, :mod:`~agentrl.training.warm_start`: supervised fine-tuning on
  demonstrations, and SFT followed by RL;
- :mod:`~agentrl.training.update`: the policy update (epochs, mini- and micro-batches);
- :mod:`~agentrl.training.evaluate`: held-out evaluation (``agentrl eval`` and in-loop);
- :mod:`~agentrl.training.policy`: the model, its DeepSpeed engine, the reference model, the engine;
- :mod:`~agentrl.training.checkpoint`, :mod:`~agentrl.training.logger`: the run folder's
  checkpoints (with ``TrainerState``) and metrics;
- :mod:`~agentrl.training.metrics`, :mod:`~agentrl.training.curriculum`,
  :mod:`~agentrl.training.distributed`: pure helpers of the loop.

May import: :mod:`agentrl.config` and every stage below it.
"""
