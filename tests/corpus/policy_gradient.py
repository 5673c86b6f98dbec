"""pytorch/examples reinforcement_learning/reinforce.py shape, with a tiny built-in
environment instead of gym: Categorical sampling in select_action, discounted and
normalised returns, -log_prob * R summed, one Adam step per episode."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Categorical


class Policy(nn.Module):
    def __init__(self):
        super().__init__()
        self.affine1 = nn.Linear(4, 32)
        self.dropout = nn.Dropout(p=0.2)
        self.affine2 = nn.Linear(32, 2)
        self.saved_log_probs, self.rewards = [], []

    def forward(self, x):
        return F.softmax(self.affine2(F.relu(self.dropout(self.affine1(x)))), dim=1)


class Env:  # reward 1 when the action matches the sign of the first feature
    def __init__(self):
        self.g = torch.Generator().manual_seed(0)

    def reset(self):
        self.state = torch.randn(4, generator=self.g)
        return self.state

    def step(self, action):
        reward = float(action == int(self.state[0] > 0))
        return self.reset(), reward


policy = Policy()
optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
eps, gamma = 1e-7, 0.99
env = Env()
for episode in range(15):
    state = env.reset()
    for t in range(10):
        probs = policy(state.unsqueeze(0))
        m = Categorical(probs)
        action = m.sample()
        policy.saved_log_probs.append(m.log_prob(action))
        state, reward = env.step(action.item())
        policy.rewards.append(reward)
    R, returns = 0.0, []
    for r in policy.rewards[::-1]:
        R = r + gamma * R
        returns.insert(0, R)
    returns = torch.tensor(returns)
    returns = (returns - returns.mean()) / (returns.std() + eps)
    policy_loss = torch.cat([-lp * R for lp, R in zip(policy.saved_log_probs, returns)]).sum()
    optimizer.zero_grad()
    policy_loss.backward()
    optimizer.step()
    del policy.rewards[:], policy.saved_log_probs[:]
