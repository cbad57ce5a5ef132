"""Fit a multinomial logistic regression with scikit-learn; the weights are its coefficients."""

from __future__ import annotations

from data import load_digits, split
from sklearn.linear_model import LogisticRegression


def train(ctx) -> None:
    p = ctx.params
    features, labels = load_digits(ctx.inputs["digits"])
    train_idx, _ = split(len(labels), p["split_seed"], p["held_out"])
    model = LogisticRegression(C=p["C"], max_iter=p["max_iter"], tol=p["tol"],
                               random_state=ctx.seed)
    model.fit(features[train_idx], labels[train_idx])
    ctx.log_metric("iterations", float(model.n_iter_[0]))
    ctx.progress(1, 1, "fitted")
    ctx.save_weights({"coef": model.coef_, "intercept": model.intercept_,
                      "classes": model.classes_})
