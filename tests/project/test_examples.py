"""The worked example (examples/conv_digits.py) on a small slice of scikit-learn's digits."""
import importlib.util
import math

from conftest import ROOT

EXAMPLE = ROOT / "examples" / "conv_digits.py"


def test_the_conv_net_example_trains_and_is_measured(capsys):
    spec = importlib.util.spec_from_file_location("conv_digits", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = mod.main(train=300, epochs=4, segments=20, points=8, probes=8)
    table = capsys.readouterr().out.splitlines()[1:-1]   # its table: a name, then columns apart by spaces
    assert [ln.split()[0] for ln in table[1:]] == list(r["after"].values), table
    assert r["held_out"] == 1797 - 300 and r["test_accuracy"] > 0.8, r["test_accuracy"]
    before, after = r["before"].values, r["after"].values
    assert set(before) == {"gradient_norm", "function_path_length", "gradient_path_length", "lipschitz_lower",
                           "lipschitz_upper"}
    assert set(after) == set(before) | {"loss", "sharpness", "hessian_trace", "density_trace"}
    for k in ("gradient_norm", "function_path_length", "gradient_path_length"):   # Monte Carlo estimates with their errors
        assert after[k].se > 0 and after[k].n > 0 and math.isfinite(after[k])
    # a finite Lipschitz bracket of the margin, for a net with convolutions, BatchNorm, max pooling and Dropout
    assert 0 < after["lipschitz_lower"] <= after["lipschitz_upper"] < math.inf
    assert after["sharpness"] > 0 and after["hessian_trace"].n == 8 and r["after"].density is not None
