"""A hand-written sparse GA: what a competent user writes with DEAP and torch, no framework.

One process, torch's default intra-op threads (every core), dense weights multiplied by their
mask at every step. It imports nothing from neuroevo_sparse, so it is the yardstick the
framework is measured against (benchmarks/end_to_end.py, benchmarks/ablation.py).

The work (issue 13 / 17): population 16, 8 generations of 16 offspring, Fashion-MNIST MLP
784-300-100-10 at a uniform density, neuron crossover p = 0.5, SET mutation zeta = 0.3 (new
connections drawn from the layer's default init), tournaments of 3, comma survival with one
elite; each evaluation a fresh SGD optimiser (lr 0.05, momentum 0.9) for 94 batches of 128,
then accuracy on a 10k validation split; trained weights written back (Lamarckian). The best
individual by validation accuracy is then scored on the test split.

    python benchmarks/reference_ga.py --density 0.1 --seed 0     # prints one JSON line
    python benchmarks/reference_ga.py --dense --seed 0           # one dense network, same samples

`--dense` trains one dense network of the same shape with the same optimiser for as many
samples as the whole GA trains (evaluations x steps x 128), the distance to dense.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import time

T0 = time.perf_counter()  # whole process: imports, data and the GA

import numpy as np
import torch
import torch.nn.functional as F
from deap import base, creator, tools

DATA = "/usr/share/datasets/fashion-mnist"


def load_fashion(seed: int):
    def idx(name, offset):
        with gzip.open(f"{DATA}/{name}-ubyte.gz") as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)
    x = idx("train-images-idx3", 16).reshape(-1, 784).astype(np.float32) / 255
    y = idx("train-labels-idx1", 8).astype(np.int64)
    xt = idx("t10k-images-idx3", 16).reshape(-1, 784).astype(np.float32) / 255
    yt = idx("t10k-labels-idx1", 8).astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    val, tr = order[:10_000], order[10_000:]
    mean, std = x[tr].mean(), x[tr].std()
    t = lambda a: torch.from_numpy((a - mean) / std)  # noqa: E731
    return (t(x[tr]), torch.from_numpy(y[tr])), (t(x[val]), torch.from_numpy(y[val])), (t(xt), torch.from_numpy(yt))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--steps", type=int, default=94)
    ap.add_argument("--dense", action="store_true", help="train one dense network for the GA's samples")
    args = ap.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    (x, y), (xv, yv), (xt, yt) = load_fashion(args.seed)
    sizes = [784, 300, 100, 10]

    creator.create("FitnessMax", base.Fitness, weights=(1.0,))
    creator.create("Individual", list, fitness=creator.FitnessMax)

    def new_individual():
        layers = []
        for fan_in, fan_out in zip(sizes, sizes[1:]):
            lin = torch.nn.Linear(fan_in, fan_out)  # torch's default init
            mask = torch.zeros(fan_out * fan_in)
            mask[torch.randperm(fan_out * fan_in)[: round(args.density * fan_out * fan_in)]] = 1
            mask = mask.view(fan_out, fan_in)
            layers.append([mask, lin.weight.detach() * mask, lin.bias.detach().clone()])
        return creator.Individual(layers)

    def forward(layers, h):
        for i, (m, w, b) in enumerate(layers):
            h = F.linear(h, w * m, b)
            if i < len(layers) - 1:
                h = F.relu(h)
        return h

    def evaluate(ind):
        params = [t.clone().requires_grad_() for _, w, b in ind for t in (w, b)]
        masks = [m for m, _, _ in ind]
        opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
        order = torch.randperm(len(y))
        for s in range(args.steps):
            i = order[s * 128 % len(y):][:128]
            layers = [(m, params[2 * k], params[2 * k + 1]) for k, m in enumerate(masks)]
            loss = F.cross_entropy(forward(layers, x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        for k, layer in enumerate(ind):  # Lamarckian: the trained weights go back into the genome
            layer[1], layer[2] = params[2 * k].detach() * layer[0], params[2 * k + 1].detach()
        with torch.no_grad():
            return ((forward(ind, xv).argmax(1) == yv).float().mean().item(),)

    def cx_neuron(a, b):
        for la, lb in zip(a, b):
            rows = torch.rand(la[0].shape[0]) < 0.5
            for k in range(3):
                la[k][rows], lb[k][rows] = lb[k][rows].clone(), la[k][rows].clone()
        return a, b

    def mut_set(ind, zeta=0.3):
        for layer in ind:
            m, w = layer[0].view(-1), layer[1].view(-1)
            active = m.nonzero().squeeze(1)
            n = round(zeta * len(active))
            drop = active[w[active].abs().argsort()[:n]]
            m[drop], w[drop] = 0, 0
            free = (m == 0).nonzero().squeeze(1)
            free = free[~torch.isin(free, drop)]
            grow = free[torch.randperm(len(free))[:n]]
            bound = 1 / layer[0].shape[1] ** 0.5  # the layer's default init
            m[grow], w[grow] = 1, torch.empty(len(grow)).uniform_(-bound, bound)
        return (ind,)

    if args.dense:
        evaluations = args.population * (args.generations + 1)
        net = torch.nn.Sequential(torch.nn.Linear(784, 300), torch.nn.ReLU(), torch.nn.Linear(300, 100),
                                  torch.nn.ReLU(), torch.nn.Linear(100, 10))
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        steps, done = evaluations * args.steps, 0
        while done < steps:
            for i in torch.randperm(len(y)).split(128)[: steps - done]:
                loss = F.cross_entropy(net(x[i]), y[i])
                opt.zero_grad()
                loss.backward()
                opt.step()
                done += 1
        with torch.no_grad():
            val = (net(xv).argmax(1) == yv).float().mean().item()
            test = (net(xt).argmax(1) == yt).float().mean().item()
        print(json.dumps({"dense": True, "seed": args.seed, "samples": steps * 128, "val": val, "test": test,
                          "wall_seconds": time.perf_counter() - T0}))
        return

    tb = base.Toolbox()
    tb.register("evaluate", evaluate)
    tb.register("mate", cx_neuron)
    tb.register("mutate", mut_set)
    tb.register("select", tools.selTournament, tournsize=3)
    clone = lambda ind: creator.Individual([[t.clone() for t in layer] for layer in ind])  # noqa: E731

    start = time.perf_counter()
    pop = [new_individual() for _ in range(args.population)]
    for ind in pop:
        ind.fitness.values = tb.evaluate(ind)
    curve = [(time.perf_counter() - T0, max(i.fitness.values[0] for i in pop))]
    for _ in range(args.generations):
        offspring = [clone(i) for i in tb.select(pop, args.population)]
        for a, b in zip(offspring[::2], offspring[1::2]):
            if random.random() < 0.5:
                tb.mate(a, b)
        for child in offspring:
            tb.mutate(child)
            child.fitness.values = tb.evaluate(child)
        elite = tools.selBest(pop, 1)
        pop = elite + tools.selBest(offspring, args.population - 1)
        curve.append((time.perf_counter() - T0, max(i.fitness.values[0] for i in pop)))
    ga_seconds = time.perf_counter() - start

    best = tools.selBest(pop, 1)[0]
    with torch.no_grad():
        test = (forward(best, xt).argmax(1) == yt).float().mean().item()
    print(json.dumps({"density": args.density, "seed": args.seed, "best_val": best.fitness.values[0],
                      "test_of_best_val": test, "ga_seconds": ga_seconds,
                      "evaluations": args.population * (args.generations + 1),
                      "curve": curve, "wall_seconds": time.perf_counter() - T0}))


if __name__ == "__main__":
    main()
