"""The smoothness measures (Volhejn & Lampert, sec. 3) and the others this package computes: in input space (GN,
FPL, GPL and the Lipschitz bounds, of any torch module: inputspace, anymodule, lipschitz), in parameter space (WP,
the path norm, sharpness, the Hessian trace, norms: paramspace), exactly in one dimension (oned); the one table
of them all (registry)."""
from smoothness.measures.inputspace import (DEFAULT_POINTS, DEFAULT_SEGMENTS, MEASURES, SAMPLED, fpl_lower_bound,
                                            function_path_length, gradient_norm, gradient_norm_squared,
                                            gradient_path_length, lipschitz_bounds, measure_stack, path_norm,
                                            path_norms, relu_stack, segment_total_variation, weights_product,
                                            weights_products)

__all__ = ["DEFAULT_POINTS", "DEFAULT_SEGMENTS", "MEASURES", "SAMPLED", "fpl_lower_bound", "function_path_length",
           "gradient_norm", "gradient_norm_squared", "gradient_path_length", "lipschitz_bounds", "measure_stack",
           "path_norm", "path_norms", "relu_stack", "segment_total_variation", "weights_product", "weights_products"]
