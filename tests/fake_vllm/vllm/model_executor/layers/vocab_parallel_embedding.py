"""Stand-in for the class agentrl's weight push looks for after a reload (none exist here)."""


class UnquantizedEmbeddingMethod:
    def process_weights_after_loading(self, layer) -> None:
        pass
