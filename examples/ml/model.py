"""Multinomial logistic regression (softmax) trained with plain per-example SGD."""

from __future__ import annotations

import math
import random


def init_weights(n_features: int, n_classes: int, rng: random.Random) -> dict:
    # Random (not zero) init: with a tiny learning rate the model visibly stays near chance.
    return {
        "W": [[rng.gauss(0.0, 1.0) for _ in range(n_features)] for _ in range(n_classes)],
        "b": [0.0] * n_classes,
    }


def class_scores(weights: dict, x: list[float]) -> list[float]:
    return [
        sum(w * v for w, v in zip(row, x, strict=True)) + b for row, b in zip(weights["W"], weights["b"], strict=True)
    ]


def softmax(scores: list[float]) -> list[float]:
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def example_loss(probs: list[float], label: int) -> float:
    return -math.log(max(probs[label], 1e-12))


def predict(weights: dict, x: list[float]) -> int:
    scores = class_scores(weights, x)
    return scores.index(max(scores))


def sgd_epoch(
    weights: dict, xs: list[list[float]], ys: list[int], lr: float, rng: random.Random
) -> tuple[float, float]:
    """One shuffled pass, updating weights in place; returns (mean loss, accuracy) seen while training."""
    order = list(range(len(xs)))
    rng.shuffle(order)
    total_loss = 0.0
    correct = 0
    for i in order:
        x, label = xs[i], ys[i]
        probs = softmax(class_scores(weights, x))
        total_loss += example_loss(probs, label)
        correct += probs.index(max(probs)) == label
        for k, (row, p) in enumerate(zip(weights["W"], probs, strict=True)):
            grad = p - (1.0 if k == label else 0.0)
            for j, v in enumerate(x):
                row[j] -= lr * grad * v
            weights["b"][k] -= lr * grad
    return total_loss / len(xs), correct / len(xs)


def evaluate(weights: dict, xs: list[list[float]], ys: list[int]) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) on a split."""
    total_loss = 0.0
    correct = 0
    for x, label in zip(xs, ys, strict=True):
        probs = softmax(class_scores(weights, x))
        total_loss += example_loss(probs, label)
        correct += probs.index(max(probs)) == label
    return total_loss / len(xs), correct / len(xs)
