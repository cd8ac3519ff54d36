"""Slow, obviously-correct oracles: plain Python loops over groups and coordinates (STYLE §7)."""
import math


def toy_loss(theta, alphas):
    """sum_i alpha_i * (1 - x_i0^2/|x_i|^2), one group at a time."""
    total = 0.0
    for a, g in zip(alphas, theta):
        sq = sum(v * v for v in g)
        total += a * (1.0 - g[0] * g[0] / sq)
    return total


def toy_grad_fd(theta, alphas, h=1e-6):
    """Central finite differences of toy_loss."""
    grad = []
    for i, g in enumerate(theta):
        row = []
        for k in range(len(g)):
            plus = [list(r) for r in theta]
            minus = [list(r) for r in theta]
            plus[i][k] += h
            minus[i][k] -= h
            row.append((toy_loss(plus, alphas) - toy_loss(minus, alphas)) / (2 * h))
        grad.append(row)
    return grad


def toy_grad(theta, alphas):
    """d/dtheta of alpha*(1 - x0^2/r^2): 2 alpha (x0^2 theta / r^4 - x0 e0 / r^2)."""
    out = []
    for a, g in zip(alphas, theta):
        sq = sum(v * v for v in g)
        row = [2 * a * g[0] ** 2 * v / sq**2 for v in g]
        row[0] -= 2 * a * g[0] / sq
        out.append(row)
    return out


def projected_gd(theta, alphas, elr, steps, constraint="total"):
    """theta <- rescale(theta - lr * grad) with lr = elr * |theta0|^2, norms re-measured each step."""
    theta = [list(g) for g in theta]
    radii = [math.sqrt(sum(v * v for v in g)) for g in theta]
    rho = math.sqrt(sum(r * r for r in radii))
    lr = elr * rho * rho
    losses = []
    for _ in range(steps):
        losses.append(toy_loss(theta, alphas))
        grad = toy_grad(theta, alphas)
        v = [[x - lr * gx for x, gx in zip(g, gg)] for g, gg in zip(theta, grad)]
        if constraint == "total":
            norm = math.sqrt(sum(x * x for g in v for x in g))
            theta = [[rho * x / norm for x in g] for g in v]
        else:
            theta = [[r * x / math.sqrt(sum(y * y for y in g)) for x in g] for r, g in zip(radii, v)]
    return theta, losses
