"""Textbook recurrent cells, written out gate by gate, for reading and teaching.

Each cell matches its fused torch counterpart (`nn.RNNCell`, `nn.LSTMCell`, `nn.GRUCell`) once
`copy_from` has copied that cell's weights; `ReferenceLayer` runs a cell over time with the
same call signature as a unidirectional, batch-first `nn.RNN` / `nn.LSTM` / `nn.GRU`, so the
classifier can train with it (slowly) by setting `cell: reference`.
"""

import torch
from torch import Tensor, nn


class ElmanCell(nn.Module):
    """h' = tanh(W [x; h] + b): one weight matrix over the concatenated input and hidden state."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.linear = nn.Linear(input_size + hidden_size, hidden_size)

    def forward(self, x: Tensor, state: Tensor) -> Tensor:
        return torch.tanh(self.linear(torch.cat([x, state], dim=-1)))

    def init_state(self, batch: int, like: Tensor) -> Tensor:
        return like.new_zeros(batch, self.hidden_size)

    @torch.no_grad()
    def copy_from(self, cell: nn.RNNCell) -> "ElmanCell":
        self.linear.weight.copy_(torch.cat([cell.weight_ih, cell.weight_hh], dim=1))
        self.linear.bias.copy_(cell.bias_ih + cell.bias_hh)
        return self


class LSTMCell(nn.Module):
    """Input, forget, candidate and output gates over [x; h]; the cell state carries memory."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.linear = nn.Linear(input_size + hidden_size, 4 * hidden_size)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state
        gates = self.linear(torch.cat([x, h], dim=-1))  # (B, 4H), torch's order: i, f, g, o
        i, f, g, o = gates.chunk(4, dim=-1)
        input_gate, forget_gate = torch.sigmoid(i), torch.sigmoid(f)
        candidate, output_gate = torch.tanh(g), torch.sigmoid(o)
        c = forget_gate * c + input_gate * candidate
        h = output_gate * torch.tanh(c)
        return h, c

    def init_state(self, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
        zeros = like.new_zeros(batch, self.hidden_size)
        return zeros, zeros.clone()

    @torch.no_grad()
    def copy_from(self, cell: nn.LSTMCell) -> "LSTMCell":
        self.linear.weight.copy_(torch.cat([cell.weight_ih, cell.weight_hh], dim=1))
        self.linear.bias.copy_(cell.bias_ih + cell.bias_hh)
        return self


class GRUCell(nn.Module):
    """Reset and update gates. The reset gate scales only the hidden part of the candidate,
    so input and hidden projections stay separate (concatenating them would change the cell)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.input_proj = nn.Linear(input_size, 3 * hidden_size)
        self.hidden_proj = nn.Linear(hidden_size, 3 * hidden_size)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        xr, xz, xn = self.input_proj(x).chunk(3, dim=-1)  # torch's order: reset, update, new
        hr, hz, hn = self.hidden_proj(h).chunk(3, dim=-1)
        reset = torch.sigmoid(xr + hr)
        update = torch.sigmoid(xz + hz)
        candidate = torch.tanh(xn + reset * hn)
        return (1 - update) * candidate + update * h

    def init_state(self, batch: int, like: Tensor) -> Tensor:
        return like.new_zeros(batch, self.hidden_size)

    @torch.no_grad()
    def copy_from(self, cell: nn.GRUCell) -> "GRUCell":
        self.input_proj.weight.copy_(cell.weight_ih)
        self.input_proj.bias.copy_(cell.bias_ih)
        self.hidden_proj.weight.copy_(cell.weight_hh)
        self.hidden_proj.bias.copy_(cell.bias_hh)
        return self


REFERENCE_CELLS: dict[str, type[nn.Module]] = {"rnn": ElmanCell, "lstm": LSTMCell, "gru": GRUCell}


class ReferenceLayer(nn.Module):
    """Runs a textbook cell over time: (B, T, I) -> ((B, T, H), final state), like `nn.LSTM`."""

    def __init__(self, arch: str, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.cell = REFERENCE_CELLS[arch](input_size, hidden_size)

    def forward(self, x: Tensor, hx: object = None) -> tuple[Tensor, object]:
        """`hx` and the returned state are laid out as torch's layers do: (1, B, H), or a pair
        of those for an LSTM; None starts from zeros."""
        if hx is None:
            state = self.cell.init_state(x.shape[0], x)
        elif isinstance(hx, tuple):
            state = tuple(h[0] for h in hx)
        else:
            state = hx[0]  # type: ignore[index]
        outputs = []
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
            outputs.append(state[0] if isinstance(state, tuple) else state)
        final = tuple(h.unsqueeze(0) for h in state) if isinstance(state, tuple) else state[None]
        return torch.stack(outputs, dim=1), final
