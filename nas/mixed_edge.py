"""MixedEdge with ProxylessNAS binary gates (thesis 3.3.2; Cai et al., 2019).

An edge holds its candidate blocks, one architecture parameter ``alpha`` per candidate and, per step, a sampled path
that the supernet sets. Two ways to run an edge (the supernet passes them in; there is no global mode):

* ``weights``: only the active candidate runs (memory of one path); unsampled candidates get no gradient, so the
  optimizer leaves them untouched (no weight decay, no momentum).
* ``arch``: only the active candidate runs forward (its graph carries the gradient to earlier layers); the binary
  gates ``g`` (1 for the active candidate, 0 for the others) enter through a custom autograd function whose backward
  gives ``dL/dg_j = <dL/dy, o_j(x)>``, recomputing each involved candidate's output ``o_j(x)`` one at a time under
  ``no_grad``. With two-path sampling (ProxylessNAS default) the involved candidates are the sampled pair; with
  single-path sampling all candidates are. Memory stays that of one path plus one transient output.

The gate gradients then become alpha's gradient by ``dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i)`` with ``p``
the softmax over all candidates (single) or over the sampled pair (two-path), *added* to whatever gradient alpha
already has (the latency term's exact one). After a two-path step :meth:`MixedEdge.rescale_pair` shifts the pair's
alphas so that their total probability is unchanged, leaving unsampled candidates exactly where they were.

Zero policy: the Zero candidate is the identity (its output is its input), so its gate gradient is well defined and
computed like any other; the reference implementation instead skips the edge's update when Zero is active.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from models.blocks import Block
from models.naming import BlockSpec


class _RecomputedGates(torch.autograd.Function):
    """Identity on the active output; in backward, ``dL/dg_j = <grad, o_j(x)>`` for the involved candidates, with
    ``o_j`` recomputed one at a time (the other gates get 0)."""

    @staticmethod
    def forward(ctx, gates: torch.Tensor, active_out: torch.Tensor, x: torch.Tensor, edge: MixedEdge,
                active: int) -> torch.Tensor:
        ctx.save_for_backward(x, active_out)
        ctx.edge, ctx.active = edge, active
        # backward runs outside the forward's autocast region: recompute under the same precision, or an AMP
        # step feeds half-precision x to float32 weights
        device_type = x.device.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        return active_out.view_as(active_out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, active_out = ctx.saved_tensors
        edge: MixedEdge = ctx.edge
        gate_grads = torch.zeros(len(edge.ops), dtype=torch.float32, device=grad.device)
        device_type, enabled, dtype = ctx.autocast
        with torch.no_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
            for j in edge.involved:
                out = active_out if j == ctx.active else edge.ops[j](x)
                gate_grads[j] = (grad.float() * out.float()).sum()
        return gate_grads, grad, None, None, None


class MixedEdge(nn.Module):
    """One searchable layer: candidate blocks, architecture parameters and binary gates.

    Args:
        candidates: candidate specs (``Zero`` allowed; see :class:`~models.search_space.SearchSpace`).
        cin: input channels.
        alpha_init_std: standard deviation of alpha's normal initialisation (ProxylessNAS: 1e-3).
    """

    def __init__(self, candidates: Sequence[BlockSpec], cin: int, alpha_init_std: float = 1e-3):
        super().__init__()
        self.candidates = list(candidates)
        self.ops = nn.ModuleList(Block(spec, cin) for spec in self.candidates)
        self.alpha = nn.Parameter(torch.randn(len(self.candidates)) * alpha_init_std)
        self.zero_index = next((i for i, s in enumerate(self.candidates) if s.family == "Zero"), None)
        # per-step state, set by the supernet through set_path()
        self.active = 0
        self.involved: tuple[int, ...] = (0,)
        self.mode = "weights"
        self.gates: torch.Tensor | None = None  # binary gates of the current architecture step
        self._pair_alphas: list[float] | None = None

    # ------------------------------------------------------------------------------------------------- paths
    @property
    def probs(self) -> torch.Tensor:
        """p = softmax(alpha) over all candidates."""
        return torch.softmax(self.alpha, dim=0)

    def path_probs(self) -> torch.Tensor:
        """Probabilities used by this step's gradient and expected latency: over all candidates (single-path) or
        renormalised over the sampled pair (two-path, zero elsewhere). Differentiable in alpha."""
        if len(self.involved) == 1 or self.mode != "arch":
            return self.probs
        pair = torch.tensor(self.involved, device=self.alpha.device)
        sliced = torch.softmax(self.alpha[pair], dim=0)
        return torch.zeros_like(self.alpha).index_put((pair,), sliced)

    def set_path(self, active: int, involved: Sequence[int], mode: str) -> None:
        """Fix this step's active candidate, the candidates involved in the gate gradient, and the run mode."""
        if mode not in ("weights", "arch"):
            raise ValueError(f"unknown mode {mode!r}")
        self.active, self.involved, self.mode = int(active), tuple(int(i) for i in involved), mode
        self.gates = None

    def argmax(self) -> int:
        return int(self.alpha.detach().argmax())

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "weights":
            return self.ops[self.active](x)
        gates = torch.zeros(len(self.ops), device=x.device, requires_grad=True)
        with torch.no_grad():
            gates[self.active] = 1.0
        self.gates = gates
        active_out = self.ops[self.active](x)
        return _RecomputedGates.apply(gates, active_out, x.detach(), self, self.active)

    # ------------------------------------------------------------------------------------- architecture grads
    def accumulate_alpha_grad(self, gate_grads: torch.Tensor) -> None:
        """Add the ProxylessNAS rule ``sum_j dL/dg_j p_j (delta_ij - p_i)`` to alpha's gradient.

        Args:
            gate_grads: dL/dg of this step's gates (all-reduced across processes under DDP).
        """
        grads = gate_grads
        with torch.no_grad():
            probs = self.path_probs().detach()
            idx = list(self.involved) if len(self.involved) == 2 else list(range(len(self.ops)))
            p = probs[idx]
            g = grads[idx].to(p.dtype)
            # sum_j g_j p_j (delta_ij - p_i) = p_i g_i - p_i * sum_j g_j p_j
            contribution = p * g - p * (g * p).sum()
            if self.alpha.grad is None:
                self.alpha.grad = torch.zeros_like(self.alpha)
            self.alpha.grad[idx] += contribution
            if len(self.involved) == 2:
                self._pair_alphas = [float(self.alpha[i]) for i in self.involved]

    def rescale_pair(self) -> None:
        """After a two-path architecture step: shift the pair's alphas by ``log(sum exp(new) / sum exp(old))``
        so the pair keeps its total probability and unsampled candidates keep theirs."""
        if self._pair_alphas is None or len(self.involved) != 2:
            return
        with torch.no_grad():
            new = [float(self.alpha[i]) for i in self.involved]
            offset = _logsumexp(new) - _logsumexp(self._pair_alphas)
            for i in self.involved:
                self.alpha[i] -= offset
        self._pair_alphas = None

    def clear_unsampled_grads(self) -> None:
        """Drop gradients of candidates that did not run, so weight decay and momentum skip them."""
        for i, op in enumerate(self.ops):
            if i != self.active:
                for p in op.parameters():
                    p.grad = None


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))
