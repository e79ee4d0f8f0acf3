import agentrl


class GuessNumberEnv(agentrl.TextEnv):
    """Guess a secret integer from 1 to 20; every wrong guess is answered with higher or lower."""

    n, max_guesses = 20, 6
    instructions = (
        f"Guess my secret integer from 1 to {n} in at most {max_guesses} guesses. After each guess I say "
        "whether my number is higher or lower. Answer with one integer, for example: 10"
    )
    example_answer = "10"
    invalid_action_penalty = -0.2

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.secret, self.guesses, self.obs = int(self.np_random.integers(1, self.n + 1)), 0, "Your guess?"
        return self.obs, {"success": False, "action_is_valid": True, "secret": self.secret}

    def step(self, action: str):
        text, self.guesses = action.strip(), self.guesses + 1
        guess = int(text) if len(text) <= 6 and text.isascii() and text.isdigit() else None
        won, out_of_guesses = guess == self.secret, self.guesses >= self.max_guesses
        info = {"success": won, "action_is_valid": guess is not None}
        if guess is None:
            self.obs = "Invalid: answer with one integer."
            return self.obs, self.invalid_action_penalty, False, out_of_guesses, info
        self.obs = "Correct!" if won else f"{'Higher' if guess < self.secret else 'Lower'} than {guess}."
        return self.obs, 1.0 if won else -0.1, won, out_of_guesses and not won, info

    def render(self) -> str:
        return self.obs

    def oracle_actions(self) -> list[str]:
        return [str(self.secret)]


def register_envs() -> None:  # the `agentrl.envs` entry point named in pyproject.toml
    agentrl.register("guess_number", GuessNumberEnv, gym_id="guess_number/GuessNumber-v0")
