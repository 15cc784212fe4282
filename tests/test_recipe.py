"""Recipe schema and schedule: every bad input is rejected with the key, the value and what is allowed."""

from __future__ import annotations

import pytest

from ultralytics_slim.errors import SlimConfigError
from ultralytics_slim.recipe import load_recipe, shipped_recipes
from ultralytics_slim.schedule import build_schedule


@pytest.mark.parametrize("name", shipped_recipes())
def test_shipped_recipes_are_valid_for_typical_runs(name):
    recipe = load_recipe(name)
    for epochs in (10, 100, 300):
        s = build_schedule(recipe, epochs)
        assert set(s.windows) == {k for k, _ in recipe.phases()}
        assert all(0 <= w.start < w.end <= epochs for w in s.windows.values())
        steps = s.events.get("prune", ())
        assert len(set(steps)) == len(steps) and all(e in s.windows["prune"] for e in steps)
        assert not s.notes or epochs == 10  # only the shortest run lacks an epoch per pruning step


def test_shipped_recipe_resolves_by_name_like_ultralytics_data():
    assert load_recipe("prune").prune.target.macs == 0.5
    with pytest.raises(SlimConfigError, match=r"prune\.yaml"):
        load_recipe("prnue.yaml")


@pytest.mark.parametrize(
    ("recipe", "importance"),
    [
        ({"prune": {}}, "taylor"),
        ({"sparsity": {"end": 0.3}, "prune": {"start": 0.4}}, "bn_scale_lamp"),
        ({"sparsity": {"end": 0.3}, "prune": {"start": 0.4, "importance": "l2"}}, "l2"),  # a choice is kept
    ],
)
def test_auto_importance_follows_the_sparsity_phase(recipe, importance):
    assert load_recipe(recipe).prune.importance == importance


def test_auto_round_to_follows_the_runtime_grid_for_a_latency_target():
    """'auto' is the CPU kernels' channel block (what torch dispatches to here) only where latency is the target."""
    import torch

    block = 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8
    assert load_recipe({"prune": {"target": {"latency": 0.5, "runtime": "openvino"}}}).prune.round_to == block
    assert load_recipe({"prune": {}}).prune.round_to == load_recipe("prune.yaml").prune.round_to == 8
    assert load_recipe({"prune": {"target": {"latency": 0.5}, "round_to": 32}}).prune.round_to == 32  # a choice is kept


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        ({"prune": {"round_to": 0}}, r"'prune\.round_to'=0: .*'auto' or a whole number >= 1"),
        ({"sparsity": {}, "prune": {"importance": "taylor", "start": 0.6}}, r"'taylor' ranks by the loss gradient"),
        ({"prune": {"round_to": "16x"}}, r"'prune\.round_to'='16x'"),
        ({"prune": {"max_step_cut": 1.5}}, r"'prune\.max_step_cut'=1\.5: .*less than or equal to 1"),
        ({"prune": {"allocation": "even"}}, r"'prune\.allocation'='even': .*'global', 'cost' or 'uniform'"),
        ({"prune": {"targt": {"macs": 0.5}}}, r"'prune\.targt' is not a valid key\. Did you mean 'target'"),
        ({"sparsty": {}}, r"'sparsty' is not a valid key\. Did you mean 'sparsity'"),
        ({"prune": {"steps": "four"}}, r"'prune\.steps'='four'"),
        ({"prune": {"target": {"macs": 1.5}}}, r"'prune\.target\.macs'=1\.5"),
        ({"prune": {"target": {"macs": 0.5, "params": 0.5}}}, r"exactly one of 'macs', 'params' or 'latency'"),
        ({"sparsity": {"method": "l2"}}, r"'sparsity\.method'='l2'.*'bn_l1' or 'group_lasso'"),
        ({"quantize": {"bits": 4}}, r"'quantize\.bits'=4"),
        ({"distill": {"end": 30.0}}, r"write 30 for an epoch"),
        ({}, r"no section"),
    ],
)
def test_bad_recipes_name_the_key(recipe, expected):
    with pytest.raises(SlimConfigError, match=expected):
        load_recipe(recipe)


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("prune: [unclosed\n")
    with pytest.raises(SlimConfigError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text("- prune\n")
    with pytest.raises(SlimConfigError, match="expected a mapping"):
        load_recipe(bad)


def test_fractions_and_epochs_resolve():
    s = build_schedule(
        load_recipe({"sparsity": {"start": 0, "end": 0.4}, "prune": {"start": 4, "end": 7, "steps": 3}}), 10
    )
    assert (s.windows["sparsity"].start, s.windows["sparsity"].end) == (0, 4)
    assert s.events["prune"] == (4, 5, 6) and not s.notes
    assert 3 in s.windows["sparsity"] and 4 not in s.windows["sparsity"]


@pytest.mark.parametrize(
    ("recipe", "epochs", "expected"),
    [
        ({"prune": {"start": 5, "end": 3}}, 10, r"start must come before end"),
        ({"prune": {"start": 5, "end": 12}}, 10, r"ends after the run's last epoch \(epochs=10\)"),
        ({"sparsity": {"end": 0.6}, "prune": {"start": 0.5}}, 10, r"'sparsity' .* must end before 'prune' starts"),
        ({"prune": {"end": 0.8}, "quantize": {"start": 0.7}}, 10, r"QAT is the last phase"),
        ({"quantize": {"start": 10}}, 10, r"start must come before end=10 \(epochs\)"),
    ],
)
def test_schedule_conflicts(recipe, epochs, expected):
    with pytest.raises(SlimConfigError, match=expected):
        build_schedule(load_recipe(recipe), epochs)
