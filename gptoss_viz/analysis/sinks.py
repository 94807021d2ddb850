"""Attention sinks: gpt-oss's learned per-head sink logit against GPT-2's emergent first-token sink."""

from __future__ import annotations

import numpy as np


def sink_mass(trace) -> np.ndarray:
    """[L, H] mean probability a query parks on the learned sink (gpt-oss), i.e. attends to nothing."""
    return trace.sink_prob.mean(-1)


def sink_per_token(trace, layer: int, head: int) -> np.ndarray:
    """[T] the sink probability of every query position for one head."""
    return trace.sink_prob[layer, head]


def first_token_mass(trace) -> np.ndarray:
    """[L, H] mean attention queries 1.. pay to the first token: GPT-2's emergent sink (also shown for gpt-oss)."""
    return trace.first_token_mass


def learned_sinks(trace) -> np.ndarray:
    """[L, H] gpt-oss's learned sink logits (the extra softmax column each head carries)."""
    return trace.sinks


def parked_mass(trace) -> np.ndarray:
    """[L, H] the mass each head parks somewhere that carries (almost) no information: the learned sink for
    gpt-oss, the first token for GPT-2. The one number the two architectures share, on one colour scale."""
    return sink_mass(trace) if trace.sink_prob is not None else first_token_mass(trace)
