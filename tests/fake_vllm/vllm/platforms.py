"""Stand-in for ``vllm.platforms``: a CUDA platform (sleep mode exists), never the CPU one."""


class _Platform:
    def is_cpu(self) -> bool:
        return False


current_platform = _Platform()
