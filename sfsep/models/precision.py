"""Mixed-precision helpers shared by the architectures.

- `autocast_off(device)`: a block that runs in the tensors' own dtype under AMP (FFTs and
  STFTs stay in float32).
- `run_rnn(rnn, x)`: an nn.RNN/LSTM/GRU call that works under CPU bfloat16 autocast on every
  CPU. oneDNN implements the bfloat16 LSTM only on CPUs with AVX-512 BF16/AMX; on others (an
  AVX2 laptop, this project's build machine) it fails with "could not create a primitive
  descriptor for the LSTM forward propagation primitive". On the CPU the recurrent layer
  therefore runs in float32 with autocast off (the surrounding convolutions and linears stay
  in bfloat16); on CUDA autocast decides as usual.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that disables autocast on `device`."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def run_rnn(rnn: nn.RNNBase, x: torch.Tensor) -> torch.Tensor:
    """The output sequence of `rnn` on `x` (its hidden states are not returned)."""
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with autocast_off(x.device):
            return rnn(x.float())[0]
    return rnn(x)[0]
