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
