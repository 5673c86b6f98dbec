"""pytorch/examples mnist_hogwild shape: model.share_memory(), several processes train
the same parameters, each with its own optimizer and DataLoader."""
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)


def dataset():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=g)
    return torch.utils.data.TensorDataset(x, x[:, :4].argmax(1))


def train(rank, model):
    torch.manual_seed(rank)
    loader = torch.utils.data.DataLoader(dataset(), batch_size=32, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    model.train()
    for data, target in loader:
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()


def test(model):
    model.eval()
    loader = torch.utils.data.DataLoader(dataset(), batch_size=64)
    with torch.no_grad():
        return sum(model(x).argmax(1).eq(y).sum().item() for x, y in loader)


if __name__ == "__main__":
    model = Net()
    model.share_memory()
    processes = []
    for rank in range(2):
        p = mp.Process(target=train, args=(rank, model))
        p.start()
        processes.append(p)
    for p in processes:
        p.join()
    train(0, model)  # and once in this process, as the example's single-process mode
    print(test(model))
