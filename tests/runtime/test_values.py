import numpy as np
import pytest

from smoothness.runtime.values import is_integer


@pytest.mark.parametrize("v, want", [(3, True), (np.int64(3), True), (0, True), (-2, True), (True, False),
                                     (False, False), (2.0, False), (2.5, False), ("2", False), (None, False),
                                     (np.float32(2), False)])
def test_is_integer(v, want):
    assert is_integer(v) is want


def test_a_numpy_integer_setting_keys_as_the_plain_int():
    from smoothness.experiments.configuration.config import RunConfig, config_key
    a = RunConfig(regularizer="function_path_length", lam=1e-4, penalty_points=np.int64(10))
    b = RunConfig(regularizer="function_path_length", lam=1e-4, penalty_points=10)
    assert type(a.penalty_points) is int and config_key(a) == config_key(b)


def test_numpy_integers_in_any_setting_key_as_plain_ints_and_classes_sizes_are_checked_as_ints():
    from smoothness.errors import ConfigError
    from smoothness.experiments.configuration.config import RunConfig, config_key
    a = RunConfig(n_train=np.int64(64), batch_size=np.int32(16), max_epochs=np.int64(5))
    assert config_key(a) == config_key(RunConfig(n_train=64, batch_size=16, max_epochs=5))
    assert all(type(v) is int for v in (a.n_train, a.batch_size, a.max_epochs))
    with pytest.raises(ConfigError, match="multiple of 3"):
        RunConfig(classes=(0, 1, 2), n_train=np.int64(25))


def test_a_grid_built_in_python_takes_numpy_integers_as_yaml_ints():
    from smoothness.experiments.configuration import grid
    a = grid.parse({"name": "t", "n_train": [np.int64(16)], "pairs": [[np.int64(3), np.int64(8)]],
                    "hidden": np.int64(8)})
    b = grid.parse({"name": "t", "n_train": [16], "pairs": [[3, 8]], "hidden": 8})
    assert [grid.config_key(c) for c in a.configs()] == [grid.config_key(c) for c in b.configs()]
