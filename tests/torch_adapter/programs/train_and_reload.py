"""A PyTorch training script that knows nothing of fastrnn: a model with an nn.LSTM and an
nn.GRU inside its own module, a few training steps, torch.save of the whole model, torch.load
with its defaults (weights_only, the model's classes allow-listed) and an evaluation. It prints
one JSON line: the recurrent modules' classes before and after reloading, and the losses."""
import json
import sys

import torch
from torch import nn


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.lstm = nn.LSTM(8, 16, num_layers=2, bidirectional=True)
        self.gru = nn.GRU(32, 12)
        self.out = nn.Linear(12, 5)

    def forward(self, tokens):
        h, _ = self.lstm(self.embed(tokens))
        h, _ = self.gru(h)
        return self.out(h)


def main(path):
    torch.manual_seed(0)
    model = Tagger()
    tokens = torch.randint(0, 20, (9, 4))
    labels = torch.randint(0, 5, (9, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(tokens).flatten(0, 1), labels.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        before = nn.functional.cross_entropy(model(tokens).flatten(0, 1), labels.flatten())
    torch.save(model, path)
    torch.serialization.add_safe_globals([Tagger, nn.Embedding, nn.modules.rnn.LSTM,
                                          nn.modules.rnn.GRU, nn.Linear])
    reloaded = torch.load(path)
    with torch.no_grad():
        after = nn.functional.cross_entropy(reloaded(tokens).flatten(0, 1), labels.flatten())
    print(json.dumps({"trained": [type(model.lstm).__module__, type(model.gru).__module__],
                      "reloaded": [type(reloaded.lstm).__module__, type(reloaded.gru).__module__],
                      "loss": float(before), "reloaded_loss": float(after)}))


if __name__ == "__main__":
    main(sys.argv[1])
