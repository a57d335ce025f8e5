"""Models as stacks of M independent models of one family (the form in which they train as one batched program),
and the families themselves: the paper's ReLU MLPs (mlp; closed forms), a small CNN (cnn) and any nn.Module a
function builds (factory); the losses they train on (losses)."""
from smoothness.models.cnn import CNNFamily, CNNSettings
from smoothness.models.families import (
    FAMILIES,
    build,
    canonical,
    family_of_setting,
    name_of,
    same_outputs,
    shapes_digest,
    shapes_of,
    stack_from_state,
)
from smoothness.models.family import FactoryFamily, FactorySettings, Family, Flattened, ModuleFamily
from smoothness.models.mlp import (
    DEFAULT_ALPHA,
    DEFAULT_WIDTHS,
    MLPFamily,
    MLPStack,
    ReLUMLP,
    dataset_mse,
    family_of,
    forward,
    init_mlp,
    init_scale_bound,
    input_gradient,
    mlp,
    mse,
    mse_scale,
    parameter_grads,
    path_norms,
    residuals,
    sgd_update_,
    two_layer_relu,
    weights_products,
)
from smoothness.models.stack import ParamStack, cat_stacks

Stack = MLPStack | ParamStack   # the parameters of M models of any family (an MLPStack for the paper's MLP)

__all__ = ["CNNFamily", "CNNSettings", "DEFAULT_ALPHA", "DEFAULT_WIDTHS", "FAMILIES", "FactoryFamily",
           "FactorySettings", "Family", "Flattened", "MLPFamily", "MLPStack",
           "ModuleFamily", "ParamStack", "ReLUMLP", "Stack", "build", "canonical", "cat_stacks", "family_of",
           "family_of_setting", "forward",
           "dataset_mse", "init_mlp", "init_scale_bound", "input_gradient", "mlp", "mse", "mse_scale", "name_of",
           "parameter_grads",
           "path_norms", "residuals", "same_outputs", "sgd_update_", "shapes_digest", "shapes_of", "stack_from_state",
           "two_layer_relu", "weights_products"]
