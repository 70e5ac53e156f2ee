"""Healthy controls with unusual optimizers (issue #23, part "optim"): real public training
scripts from pytorch/examples, run small on CPU with no download, each recorded with
`hooks.watch` the way a user would. Each keeps what makes it unusual (its optimizer and lr,
its loop, its loss); no warning or error may appear on any of them.

`CONTROLS` lists them as `benchmarks.health_suite.Case`s (rule None: a healthy control).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hooks  # noqa: E402
from benchmarks.health_suite import Case, digits  # noqa: E402

# ---------------------------------------------------------------------------------
# (a) pytorch/examples mnist/main.py: Net (2 convs, dropout, 2 linears, log_softmax),
# nll_loss, optim.Adadelta(lr=1.0), StepLR(step_size=1, gamma=0.7) stepped per epoch.
# Sizes adapted to digits 8x8: convs 1->16->32 (3x3), max-pool 2 -> 32x2x2, fc 128->64->10.


class MnistNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, 1)
        self.conv2 = nn.Conv2d(16, 32, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(128, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)


def mnist_adadelta(folder, epochs=3, batch=64) -> Path:
    x, y, xv, yv = digits()
    torch.manual_seed(1)  # upstream's default --seed 1
    model = MnistNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)  # upstream default --lr 1.0
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    with hooks.watch(model, optimizer=opt, loss_fn=F.nll_loss, run_dir=folder, name="mnist_adadelta") as run:
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(len(x)).split(batch):
                opt.zero_grad()
                out = model(x[idx])
                loss = F.nll_loss(out, y[idx])
                run.log_batch(out, y[idx], loss=loss)  # a plain-function loss: the loop logs it
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                run.log_scalar("val/loss", F.nll_loss(model(xv), yv))
            sched.step()
    return Path(run.path)


# ---------------------------------------------------------------------------------
# (b) pytorch/examples time_sequence_prediction/train.py: two LSTMCell(51) + Linear, double
# precision, optim.LBFGS(lr=0.8) with a closure, MSELoss, sine waves (generate_sine_wave.py:
# T=20, L=1000, N=100, shifts drawn in [-4T, 4T]); shortened to L=100, N=24, 5 steps.


class Sequence(nn.Module):
    def __init__(self, hidden=51):
        super().__init__()
        self.hidden = hidden
        self.lstm1 = nn.LSTMCell(1, hidden)
        self.lstm2 = nn.LSTMCell(hidden, hidden)
        self.linear = nn.Linear(hidden, 1)

    def forward(self, inp):
        n = inp.size(0)
        h, c, h2, c2 = (torch.zeros(n, self.hidden, dtype=torch.double) for _ in range(4))
        outputs = []
        for x_t in inp.split(1, dim=1):
            h, c = self.lstm1(x_t, (h, c))
            h2, c2 = self.lstm2(h, (h2, c2))
            outputs.append(self.linear(h2))
        return torch.cat(outputs, dim=1)


def sine_waves(n=24, length=100, period=20, seed=2):
    rng = np.random.default_rng(seed)
    x = np.arange(length)[None, :] + rng.integers(-4 * period, 4 * period, n)[:, None]
    return torch.from_numpy(np.sin(x / period).astype(np.float64))


def lbfgs_sine(folder, steps=5) -> Path:
    data = sine_waves()
    inp, target = data[3:, :-1], data[3:, 1:]
    torch.manual_seed(0)
    model = Sequence().double()
    crit = nn.MSELoss()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.8)
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=folder, name="lbfgs_sine", task="regression") as run:
        for _ in range(steps):
            def closure():
                opt.zero_grad()
                loss = crit(model(inp), target)
                loss.backward()
                return loss
            opt.step(closure)
    return Path(run.path)


# ---------------------------------------------------------------------------------
# (c) pytorch/examples reinforcement_learning/actor_critic.py: Policy (affine1 4->128, ReLU,
# action_head 128->2, value_head 128->1), Adam(lr=3e-2), gamma 0.99, returns normalised,
# loss = sum(-log_prob * advantage) + sum(smooth_l1(value, return)), one update per episode.
# No gym: a CartPole-like simulated environment in numpy (4-d state, 2 actions, reward 1 per
# step until the pole falls or 200 steps).


class Policy(nn.Module):
    def __init__(self):
        super().__init__()
        self.affine1 = nn.Linear(4, 128)
        self.action_head = nn.Linear(128, 2)
        self.value_head = nn.Linear(128, 1)

    def forward(self, x):
        x = F.relu(self.affine1(x))
        return F.softmax(self.action_head(x), dim=-1), self.value_head(x)


class CartPole:
    """The cart-pole dynamics of gym's CartPole-v1 (Barto et al. 1983), Euler steps of 20 ms."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)

    def reset(self):
        self.s = self.rng.uniform(-0.05, 0.05, 4)
        return self.s.astype(np.float32)

    def step(self, action):
        x, x_dot, th, th_dot = self.s
        force = 10.0 if action == 1 else -10.0
        cos, sin = np.cos(th), np.sin(th)
        temp = (force + 0.05 * th_dot ** 2 * sin) / 1.1
        th_acc = (9.8 * sin - cos * temp) / (0.5 * (4.0 / 3.0 - 0.1 * cos ** 2 / 1.1))
        x_acc = temp - 0.05 * th_acc * cos / 1.1
        self.s = np.array([x + 0.02 * x_dot, x_dot + 0.02 * x_acc, th + 0.02 * th_dot, th_dot + 0.02 * th_acc])
        done = abs(self.s[0]) > 2.4 or abs(self.s[2]) > 12 * 2 * np.pi / 360
        return self.s.astype(np.float32), 1.0, done


def actor_critic(folder, episodes=60, gamma=0.99) -> Path:
    torch.manual_seed(543)  # upstream's default --seed 543
    env, model = CartPole(543), Policy()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    with hooks.watch(model, optimizer=opt, run_dir=folder, name="actor_critic", every=1) as run:
        for _ in range(episodes):
            state, log_probs, values, rewards = env.reset(), [], [], []
            for _ in range(200):
                probs, value = model(torch.from_numpy(state))
                m = torch.distributions.Categorical(probs)
                action = m.sample()
                log_probs.append(m.log_prob(action))
                values.append(value)
                state, reward, done = env.step(action.item())
                rewards.append(reward)
                if done:
                    break
            returns, r = [], 0.0
            for reward in reversed(rewards):
                r = reward + gamma * r
                returns.insert(0, r)
            returns = torch.tensor(returns)
            returns = (returns - returns.mean()) / (returns.std() + np.finfo(np.float32).eps.item())
            policy_loss = [-lp * (ret - v.item()) for lp, v, ret in zip(log_probs, values, returns)]
            value_loss = [F.smooth_l1_loss(v, torch.tensor([ret])) for v, ret in zip(values, returns)]
            opt.zero_grad()
            loss = torch.stack(policy_loss).sum() + torch.stack(value_loss).sum()
            run.log_scalar("loss", loss)
            loss.backward()
            opt.step()
            run.log_scalar("episode_length", len(rewards))
    return Path(run.path)


# ---------------------------------------------------------------------------------
# (d) A small ResNet (He et al. 2016; the BasicBlock of torchvision models/resnet.py and of
# kuangliu/pytorch-cifar models/resnet.py): conv-BN-ReLU stem, BasicBlocks with identity or
# 1x1 projection shortcuts, global average pool, linear head; SGD(lr=0.1, momentum=0.9,
# weight_decay=5e-4) as pytorch-cifar's main.py; digits 8x8, 3 epochs.


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, widths=(16, 32), classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w)]
            cin = w
        self.layers = nn.Sequential(*blocks)
        self.linear = nn.Linear(cin, classes)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def resnet_sgd(folder, epochs=3, batch=64) -> Path:
    x, y, xv, yv = digits()
    torch.manual_seed(0)
    model, crit = ResNet(), nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=folder, name="resnet_sgd") as run:
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(len(x)).split(batch):
                opt.zero_grad()
                loss = crit(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                run.log_scalar("val/loss", crit(model(xv), yv))
    return Path(run.path)


CONTROLS: list[Case] = [
    Case("mnist_adadelta_steplr", mnist_adadelta),
    Case("time_sequence_lbfgs", lbfgs_sine),
    Case("actor_critic_adam", actor_critic),
    Case("resnet_sgd_momentum", resnet_sgd),
]
