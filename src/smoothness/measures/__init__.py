"""The smoothness measures (Volhejn & Lampert, sec. 3) and the others this package computes: in input space (GN,
FPL, GPL and the Lipschitz bounds, of any torch module: inputspace, anymodule, lipschitz), in parameter space (WP,
the path norm, sharpness, the Hessian trace, norms: paramspace), exactly in one dimension (oned), the minibatch
variants that the regularizers penalize (penalties); and the one table of them all, which computes them for a stack
of models (registry)."""
from smoothness.measures.inputspace import (
                                            DEFAULT_POINTS,
                                            DEFAULT_SEGMENTS,
                                            fpl_lower_bound,
                                            function_path_length,
                                            gradient_norm,
                                            gradient_norm_squared,
                                            gradient_path_length,
                                            lipschitz_bounds,
                                            path_norm,
                                            path_norms,
                                            relu_stack,
                                            segment_total_variation,
                                            weights_product,
                                            weights_products,
)
from smoothness.measures.registry import MEASURES, REGISTRY, SAMPLED, measure_stack, parameter_measures

__all__ = ["DEFAULT_POINTS", "DEFAULT_SEGMENTS", "MEASURES", "REGISTRY", "SAMPLED", "fpl_lower_bound",
           "function_path_length", "gradient_norm", "gradient_norm_squared", "gradient_path_length",
           "lipschitz_bounds", "measure_stack", "parameter_measures", "path_norm", "path_norms", "relu_stack",
           "segment_total_variation", "weights_product", "weights_products"]
