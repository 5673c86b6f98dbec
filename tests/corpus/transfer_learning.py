"""PyTorch tutorial "Transfer learning" shape (fixed feature extractor): ImageFolder
data, a backbone with requires_grad=False (BatchNorm, eval for validation), a new head,
SGD over the head only, StepLR, train/val phases with torch.set_grad_enabled."""
import torch
import torch.nn as nn
import torch.optim as optim
from torch.optim import lr_scheduler
from torchvision import datasets, transforms

data_transforms = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor()])
image_datasets = {x: datasets.ImageFolder(f"data/hymenoptera_data/{x}", data_transforms)
                  for x in ["train", "val"]}
dataloaders = {x: torch.utils.data.DataLoader(image_datasets[x], batch_size=8, shuffle=True)
               for x in ["train", "val"]}
class_names = image_datasets["train"].classes


class Backbone(nn.Module):  # a tiny stand-in for a pretrained ResNet
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 1000)

    def forward(self, x):
        return self.fc(self.features(x))


model_conv = Backbone()
for param in model_conv.parameters():
    param.requires_grad = False
model_conv.fc = nn.Linear(8, len(class_names))
criterion = nn.CrossEntropyLoss()
optimizer_conv = optim.SGD(model_conv.fc.parameters(), lr=0.01, momentum=0.9)
exp_lr_scheduler = lr_scheduler.StepLR(optimizer_conv, step_size=7, gamma=0.1)
for epoch in range(2):
    for phase in ["train", "val"]:
        model_conv.train() if phase == "train" else model_conv.eval()
        for inputs, labels in dataloaders[phase]:
            optimizer_conv.zero_grad()
            with torch.set_grad_enabled(phase == "train"):
                outputs = model_conv(inputs)
                loss = criterion(outputs, labels)
                if phase == "train":
                    loss.backward()
                    optimizer_conv.step()
        if phase == "train":
            exp_lr_scheduler.step()
