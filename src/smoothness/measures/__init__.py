"""The smoothness measures (Volhejn & Lampert, sec. 3) and the others this package computes.

Of one model, any torch module, over a tensor or a DataLoader, each an Estimate with its standard error: the
input-space measures (single: GN, FPL, GPL, the Lipschitz bracket; lipbound: the upper bound of convolutional
nets) and the curvature of any loss (curvature: sharpness, the top eigenvalues, the Hessian trace, the eigenvalue
density, and the names of operators and gaussnewton, the Hessian, GGN, Fisher and empirical Fisher as operators,
spectrum, eigenvalues at both ends with error bounds, and trace, traces and diagonals with standard errors; lanczos
underneath); model.measure_model computes them all with the cost of each.

Batched over a stack of ReLU MLPs, as the experiments use them: inputspace, paramspace (WP, the path
norm, sharpness, the Hessian trace, norms), lipschitz, oned (exact in one dimension), penalties (the minibatch
variants the regularizers penalize), and registry, the one table of them all, which computes them for a stack.
"""
from smoothness.measures.estimate import Estimate
from smoothness.measures.inputspace import DEFAULT_POINTS, DEFAULT_SEGMENTS, path_norms, relu_stack, weights_products
from smoothness.measures.model import ModelMeasures, Settings, measure_model
from smoothness.measures.registry import MEASURES, REGISTRY, SAMPLED, measure_stack, parameter_measures
from smoothness.measures.single import (
    fpl_lower_bound,
    function_path_length,
    gradient_norm,
    gradient_norm_squared,
    gradient_path_length,
    lipschitz_bounds,
    path_lengths,
    path_norm,
    segment_total_variation,
    weights_product,
)

__all__ = ["DEFAULT_POINTS", "DEFAULT_SEGMENTS", "MEASURES", "REGISTRY", "SAMPLED", "Estimate", "ModelMeasures",
           "Settings", "fpl_lower_bound", "measure_model",
           "function_path_length", "gradient_norm", "gradient_norm_squared", "gradient_path_length",
           "lipschitz_bounds", "measure_stack", "parameter_measures", "path_lengths", "path_norm", "path_norms",
           "relu_stack", "segment_total_variation", "weights_product", "weights_products"]
