"""Inference engines behind one protocol (:mod:`agentrl.engines.base`).

``hf`` runs transformers in-process and shares the trainer's model; ``vllm`` is imported only when chosen.
"""

from agentrl.engines.base import Engine, Generation, SamplingParams

#: engine name -> "module:class", imported only when chosen (vllm is an optional extra).
ENGINES = {
    "hf": "agentrl.engines.hf:HFEngine",
    "vllm": "agentrl.engines.vllm:VLLMEngine",
}

__all__ = ["ENGINES", "Engine", "Generation", "SamplingParams"]
