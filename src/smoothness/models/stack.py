"""M independent models of one architecture as one stack of named tensors, each with a leading model axis [M, ...]:
the form in which any model family trains as one batched program and is measured. MLPStack (mlp.py) is the ReLU
MLP's stack with named weights and biases; ParamStack holds the parameters of any other family in the order of its
module's named_parameters(). Both offer the same operations (what the trainer, the store and the measures use).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

TRAINING_COPIES = 3   # copies of a model's parameters while it trains: the weights, their gradient, a finished copy


def params_bytes(n_params: int, copies: int = 1) -> int:
    """Bytes of `copies` float32 copies of a model's n_params parameters: how the memory estimates count weights."""
    return 4 * n_params * copies


@dataclass
class ParamStack:
    """M models' parameters: names[i] is the module's parameter name of values[i], a tensor [M, *shape_i]."""

    names: tuple[str, ...]
    values: list[torch.Tensor]

    @property
    def n_models(self) -> int:
        """M, the number of models in the stack."""
        return self.values[0].shape[0]

    def tensors(self) -> list[torch.Tensor]:
        """The stacked tensors, in names' order."""
        return list(self.values)

    def _with(self, values) -> "ParamStack":
        return ParamStack(self.names, list(values))

    def with_tensors(self, tensors) -> "ParamStack":
        """A stack of the same kind holding these tensors (in tensors() order)."""
        return self._with(tensors)

    def select(self, idx) -> "ParamStack":
        """The sub-stack of the models at positions idx (a LongTensor or a list)."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.values[0].device)
        return self._with(v[idx] for v in self.values)

    def as_leaves(self) -> "ParamStack":
        """The same values as new autograd leaves (detached, requiring grad)."""
        return self._with(v.detach().requires_grad_(True) for v in self.values)

    def rows(self, a: int, b: int) -> "ParamStack":
        """Models a..b-1 as views: in-place updates of the result update this stack."""
        return self._with(v[a:b] for v in self.values)

    def to(self, *args, **kwargs) -> "ParamStack":
        """The stack with every tensor moved or cast as Tensor.to does."""
        return self._with(v.to(*args, **kwargs) for v in self.values)

    def clone(self) -> "ParamStack":
        """A copy whose tensors share no memory with this stack."""
        return self._with(v.clone() for v in self.values)

    @staticmethod
    def cat(stacks: list["ParamStack"]) -> "ParamStack":
        """The stacks' models in one stack, in order."""
        return ParamStack(stacks[0].names, [torch.cat(vs) for vs in zip(*(s.values for s in stacks))])

    def model(self, m: int) -> dict[str, torch.Tensor]:
        """Model m's parameters by name (views)."""
        return {n: v[m] for n, v in zip(self.names, self.values)}

    def state_dict(self) -> dict:
        """The names and stacked tensors on the CPU, for saving."""
        return {"names": list(self.names), "values": [v.detach().cpu() for v in self.values]}

    @staticmethod
    def from_state_dict(state: dict) -> "ParamStack":
        """The stack saved by state_dict."""
        return ParamStack(tuple(state["names"]), list(state["values"]))


def cat_stacks(stacks: list):
    """The models of several stacks of one family (MLPStack or ParamStack) in one stack, in order."""
    return type(stacks[0]).cat(stacks)
