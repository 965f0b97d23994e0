"""Plain-PyTorch reference of lstmlm's model, for benchmarks only (not part of the package).

nn.Embedding -> nn.LSTM(num_layers, batch_first=True) -> Dropout -> nn.Linear(vocabulary), cross-entropy on
logits, Adam(fused=True) or SGD, optional global-norm clipping, float32 or bfloat16 autocast: the hand-written
loop that lstmlm's training step is measured against. Imports only torch, so a process that uses it alone has no
Keras in its memory.
"""

import torch
from torch import nn


class WordLSTM(nn.Module):
    def __init__(self, vocabulary_size, embedding_size, hidden_size, num_layers, dropout=0.0, init_scale=0.0):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, embedding_size)
        self.lstm = nn.LSTM(embedding_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden_size, vocabulary_size)
        if init_scale > 0:
            for parameter in self.parameters():
                nn.init.uniform_(parameter, -init_scale, init_scale)

    def forward(self, x, state=None, float32_lstm=False):
        """float32_lstm: under bfloat16 autocast, run the LSTM in float32 (lstmlm's rule for Adam, issue 23)."""
        embedded = self.embedding(x)
        if float32_lstm:
            with torch.autocast(x.device.type, enabled=False):
                out, state = self.lstm(embedded.float(), state)
        else:
            out, state = self.lstm(embedded, state)
        return self.decoder(self.drop(out)), state

    def next_word_probabilities(self, x, last_only=True):
        """(1, time) ids -> softmax over the vocabulary after the last word. last_only=False runs the softmax
        layer (and the softmax) at every position, as a Keras model's predict does."""
        out, _ = self.lstm(self.embedding(x))
        if last_only:
            return torch.softmax(self.decoder(out[:, -1]), dim=-1)[0]
        return torch.softmax(self.decoder(out), dim=-1)[0, -1]

    @torch.no_grad()
    def generate_greedy(self, prompt_ids, words):
        """Greedy continuation, one word per step with the state carried; returns the new ids."""
        out, state = self.lstm(self.embedding(prompt_ids))
        index = self.decoder(out[:, -1]).argmax(-1)
        produced = []
        for _ in range(words):
            produced.append(int(index))
            out, state = self.lstm(self.embedding(index[:, None]), state)
            index = self.decoder(out[:, -1]).argmax(-1)
        return produced


def build(config, vocabulary_size):
    """The reference model for an lstmlm Config (or anything with the same attribute names)."""
    embedding = getattr(config, "embedding_size", 0) or config.hidden_size
    return WordLSTM(vocabulary_size, embedding, config.hidden_size, config.num_layers, config.dropout,
                    config.init_scale)


def make_optimizer(config, model):
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.learning_rate, eps=1e-7, fused=True)
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    raise ValueError(f"reference has no optimizer {config.optimizer!r}")


def forward_loss(model, x, y, state, precision="float32"):
    """(mean cross-entropy over the batch's tokens, new state). precision "bfloat16": the forward pass and the
    loss under torch.autocast, as the PyTorch docs write it (autocast runs the matrix products and the LSTM in
    bfloat16, the cross-entropy in float32); "bfloat16-float32-lstm": the same with the LSTM in float32."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision.startswith("bfloat16")):
        logits, state = model(x, state, float32_lstm=precision == "bfloat16-float32-lstm")
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return loss, state


def train_step(model, optimizer, x, y, state, clip_norm, sum_over_time=False, precision="float32",
               forward=forward_loss):
    """One step; returns (mean loss tensor, new state). x, y: (batch, time) long tensors. With `sum_over_time`
    the gradient is that of the loss summed over time steps (Zaremba et al.), as lstmlm's small preset.
    `forward`: `forward_loss`, or `torch.compile(forward_loss)` (the backward then runs inductor's graph too)."""
    loss, state = forward(model, x, y, state, precision)
    optimizer.zero_grad(set_to_none=True)
    (loss * x.shape[1] if sum_over_time else loss).backward()
    if clip_norm > 0:
        nn.utils.clip_grad_norm_(model.parameters(), clip_norm, foreach=True)
    optimizer.step()
    return loss.detach(), state


@torch.no_grad()
def copy_from_lstmlm(reference, keras_model):
    """Load an lstmlm LSTMLanguageModel's weights (Keras layout) into this reference (torch layout)."""
    def t(variable):
        return torch.as_tensor(variable.value).detach().clone()

    reference.embedding.weight.copy_(t(keras_model.embedding.embeddings))
    for i, layer in enumerate(keras_model.lstm_layers):
        getattr(reference.lstm, f"weight_ih_l{i}").copy_(t(layer.kernel).T)
        getattr(reference.lstm, f"weight_hh_l{i}").copy_(t(layer.recurrent_kernel).T)
        getattr(reference.lstm, f"bias_ih_l{i}").copy_(t(layer.bias))
        getattr(reference.lstm, f"bias_hh_l{i}").zero_()
    reference.decoder.weight.copy_(t(keras_model.output_layer.kernel).T)
    reference.decoder.bias.copy_(t(keras_model.output_layer.bias))
    return reference
