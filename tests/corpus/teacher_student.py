"""Knowledge distillation: a frozen teacher in eval mode under no_grad, a student
trained on KL divergence to the softened teacher plus cross-entropy to the labels."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(256, 20)
y = x[:, :5].argmax(1)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
teacher = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 5))
student = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5))
teacher_opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
for xb, yb in loader:  # pre-train the teacher briefly
    teacher_opt.zero_grad()
    F.cross_entropy(teacher(xb), yb).backward()
    teacher_opt.step()
teacher.eval()
for p in teacher.parameters():
    p.requires_grad_(False)
optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
T = 2.0
for epoch in range(2):
    for xb, yb in loader:
        with torch.no_grad():
            soft_targets = F.softmax(teacher(xb) / T, dim=1)
        logits = student(xb)
        kd = F.kl_div(F.log_softmax(logits / T, dim=1), soft_targets, reduction="batchmean") * T * T
        loss = 0.5 * kd + 0.5 * F.cross_entropy(logits, yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
