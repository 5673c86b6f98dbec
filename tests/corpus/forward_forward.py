"""pytorch/examples mnist_forward_forward shape: each layer trained on its own, with its
own optimizer and a local goodness loss; no end-to-end backward."""
import torch
import torch.nn as nn


class Layer(nn.Linear):
    def __init__(self, in_features, out_features):
        super().__init__(in_features, out_features)
        self.relu = nn.ReLU()
        self.opt = torch.optim.Adam(self.parameters(), lr=0.03)
        self.threshold = 2.0

    def forward(self, x):
        x_direction = x / (x.norm(2, 1, keepdim=True) + 1e-4)
        return self.relu(torch.mm(x_direction, self.weight.T) + self.bias.unsqueeze(0))

    def train_layer(self, x_pos, x_neg, epochs=5):
        for _ in range(epochs):
            g_pos = self.forward(x_pos).pow(2).mean(1)
            g_neg = self.forward(x_neg).pow(2).mean(1)
            loss = torch.log(1 + torch.exp(torch.cat([-g_pos + self.threshold,
                                                      g_neg - self.threshold]))).mean()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        return self.forward(x_pos).detach(), self.forward(x_neg).detach()


def overlay(x, y):
    x = x.clone()
    x[:, :10] = 0
    x[range(x.shape[0]), y] = x.max()
    return x


torch.manual_seed(0)
x = torch.rand(128, 64)
y = (x[:, 10:20].argmax(1))
x_pos, x_neg = overlay(x, y), overlay(x, y[torch.randperm(x.size(0))])
layers = [Layer(64, 32), Layer(32, 32)]
h_pos, h_neg = x_pos, x_neg
for layer in layers:
    h_pos, h_neg = layer.train_layer(h_pos, h_neg)
with torch.no_grad():
    goodness = []
    for label in range(10):
        h = overlay(x, torch.full((x.size(0),), label))
        for layer in layers:
            h = layer(h)
        goodness.append(h.pow(2).mean(1))
    prediction = torch.stack(goodness, 1).argmax(1)
