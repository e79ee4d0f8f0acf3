"""agentrl.suggest: the one "did you mean" of every error message (outputs checked by hand)."""

import doctest

import pytest

import agentrl.suggest
from agentrl.suggest import closest, did_you_mean, lookup


@pytest.mark.parametrize(
    "name, choices, kwargs, expected",
    [
        ("sokobn", ["countdown", "sokoban"], {}, "sokoban"),
        ("countdwn", ["countdown", "sokoban"], {}, "countdown"),
        ("grop", ["drgrpo", "gigpo", "grpo", "rloo", "turn"], {}, "grpo"),
        ("xyz", ["grpo", "rloo"], {}, None),
        ("GRPO", ["grpo", "rloo"], {}, None),  # case counts unless told otherwise
        ("GRPO", ["grpo", "rloo"], {"ignore_case": True}, "grpo"),
        ("Ppo_Clip", ["PPO_clip", "reinforce"], {"ignore_case": True}, "PPO_clip"),  # spelled as given
        # difflib ratio of "tiny-randm" / "tiny-random" is 20/21 = 0.95; of "tiny" / "tiny-random" 8/15 = 0.53
        ("tiny-randm", ["tiny-random"], {"cutoff": 0.75}, "tiny-random"),
        ("tiny", ["tiny-random"], {"cutoff": 0.75}, None),
        ("tiny", ["tiny-random"], {"cutoff": 0.5}, "tiny-random"),
        ("anything", [], {}, None),
    ],
)
def test_closest(name, choices, kwargs, expected):
    assert closest(name, choices, **kwargs) == expected


def test_did_you_mean_wording():
    assert did_you_mean("sokobn", ["countdown", "sokoban"]) == " Did you mean 'sokoban'?"
    assert did_you_mean("coeff", ["coef", "estimator"], prefix="algo.kl.", quote=False) == (
        " Did you mean algo.kl.coef?"
    )
    assert (
        did_you_mean("n_group", ["n_groups", "steps"], prefix="train.") == " Did you mean 'train.n_groups'?"
    )
    assert did_you_mean("xyz", ["grpo", "rloo"]) == ""
    assert did_you_mean("K3", ("k1", "k3"), ignore_case=True) == " Did you mean 'k3'?"


def test_docstring_examples():
    result = doctest.testmod(agentrl.suggest)
    assert result.attempted >= 8 and result.failed == 0


def test_lookup_of_a_name_registry():
    registry = {"ppo_clip": "a", "reinforce": "b"}
    assert lookup(registry, "reinforce", "policy loss") == "b"
    with pytest.raises(ValueError) as err:
        lookup(registry, "PPO_clp", "policy loss")
    assert (
        str(err.value)
        == "unknown policy loss 'PPO_clp'. Did you mean 'ppo_clip'? Valid: ppo_clip, reinforce."
    )
    with pytest.raises(ValueError) as err:
        lookup(registry, "xyz", "policy loss")
    assert str(err.value) == "unknown policy loss 'xyz'. Valid: ppo_clip, reinforce."
