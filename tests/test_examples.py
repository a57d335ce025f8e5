"""The worked example (examples/conv_digits.py) on a small slice of scikit-learn's digits."""
import importlib.util
import math
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "conv_digits.py"


def test_the_conv_net_example_trains_and_is_measured():
    spec = importlib.util.spec_from_file_location("conv_digits", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = mod.main(train=300, epochs=4, segments=20, points=8, verbose=False)
    assert r["held_out"] == 1797 - 300 and r["test_accuracy"] > 0.8, r["test_accuracy"]
    for when in ("before", "after"):
        assert len(r[when]) == 5 and all(math.isfinite(v) and v > 0 for v in r[when].values()), r[when]
    # the margin's largest gradient at the held-out images bounds its mean from above
    assert r["after"]["Lipschitz lower bound (margin)"] >= r["after"]["GN (margin)"]
