"""Embedding -> fused recurrent cell (nn.RNN tanh / nn.GRU / nn.LSTM; cuDNN on a GPU) -> one linear head per target.

The recurrent weights start as PyTorch initialises them (`recurrent_init="default"`), or, with
`recurrent_init="orthogonal"`, each gate's hidden x hidden block of every `weight_hh_l*` is then redrawn as an
orthogonal matrix times `spectral_radius` (docs/protocol.md, "Training semantics").
"""

from __future__ import annotations

import torch
from torch import nn

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

_CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


class RecurrentModel(nn.Module):
    def __init__(
        self,
        cell: str,
        vocab_size: int,
        out_vocab: int,
        num_heads: int,
        embedding_size: int,
        hidden_size: int,
        num_layers: int = 1,
        recurrent_init: str = "default",
        spectral_radius: float = 1.0,
    ) -> None:
        super().__init__()
        self.cell_name = cell
        self.num_heads = num_heads
        self.out_vocab = out_vocab
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        kwargs = {"nonlinearity": "tanh"} if cell == "rnn" else {}
        self.rnn = _CELLS[cell](embedding_size, hidden_size, num_layers, batch_first=True, **kwargs)
        self.decoder = nn.Linear(hidden_size, out_vocab * num_heads)
        if recurrent_init == "orthogonal":  # after every default init: the other weights are the default's
            orthogonal_recurrent_(self.rnn, spectral_radius)
        elif recurrent_init != "default":
            raise ValueError(f"recurrent_init={recurrent_init!r}: must be default or orthogonal")

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        shape = (self.rnn.num_layers, batch_size, self.rnn.hidden_size)
        h = torch.zeros(shape, device=device or self.decoder.weight.device)
        return (h, torch.zeros_like(h)) if self.cell_name == "lstm" else h

    def forward_embedded(self, emb: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """From input embeddings [B, T, E]: logits [B, T, heads, out_vocab] and the final state."""
        hidden, state = self.rnn(emb, state)
        logits = self.decoder(hidden)
        return logits.view(*hidden.shape[:2], self.num_heads, self.out_vocab), state

    def forward(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        return self.forward_embedded(self.embedding(tokens), state)

    def window_logits(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """forward() for the training update: logits flat, [B*T*heads, out_vocab] in (b, t, head) order, the same
        rows `sequence_loss` makes of forward()'s output. One view instead of a view and a reshape, called
        directly rather than through the module's hooks: ~10 us less per update (bench/README.md)."""
        hidden, state = self.rnn(self.embedding(tokens), state)
        return self.decoder(hidden).view(-1, self.out_vocab), state

    def hidden_states(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Top-layer hidden states [B, T, H] (for probes)."""
        return self.rnn(self.embedding(tokens), state)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role, for per-group gradient norms: input, recurrent, output weights (biases apart)."""
        groups: dict[str, list[nn.Parameter]] = {
            "input": [self.embedding.weight],
            "recurrent": [],
            "output": [],
        }
        for name, p in self.rnn.named_parameters():
            if name.startswith("weight_ih"):
                groups["input"].append(p)
            elif name.startswith("weight_hh"):
                groups["recurrent"].append(p)
        groups["output"] = [self.decoder.weight]
        return groups


@torch.no_grad()
def orthogonal_recurrent_(rnn: nn.RNNBase, spectral_radius: float) -> None:
    """Set each gate's block of every recurrent matrix `weight_hh_l*` to an orthogonal matrix (torch.nn.init.
    orthogonal_, drawn from the global torch RNG in layer and gate order) times `spectral_radius`: all its
    eigenvalues then have modulus `spectral_radius` (above 1, the regime where a tanh RNN's gradients can explode)."""
    hidden = rnn.hidden_size
    gates = rnn.weight_hh_l0.shape[0] // hidden  # PyTorch stacks the gates' blocks: RNN 1, GRU 3, LSTM 4
    for name, weight in rnn.named_parameters():
        if name.startswith("weight_hh"):
            for g in range(gates):
                block = weight[g * hidden : (g + 1) * hidden]  # a view: rows of gate g
                nn.init.orthogonal_(block)
                block.mul_(spectral_radius)


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per target token. logits [B, T, H, V], targets [H, B, T] (IGNORE where undefined)."""
    return token_loss(logits, targets.permute(1, 2, 0))


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """sequence_loss with the targets already batch-first, [B, T, H] (the training loop's layout); logits
    [B, T, H, V] or already flat [B*T*H, V] (RecurrentModel.window_logits)."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
