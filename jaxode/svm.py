"""A one-vs-rest linear SVM fitted for all classes at once by Newton's method.

It minimises, for each class k independently, the objective that scikit-learn's
``LinearSVC(dual=False)`` (liblinear's L2-regularised squared-hinge primal, intercept
as an extra constant feature that is regularised too) minimises:

    f_k(w) = 1/2 ||w||^2 + C sum_i max(0, 1 - s_ik w . [x_i, 1])^2,
    s_ik = +1 if y_i = k else -1,

and predicts argmax_k w_k . [x, 1].  f_k is strongly convex and piecewise quadratic;
its generalised Hessian is

    H_k = I + 2 C sum_{i active} [x_i, 1] [x_i, 1]^T      (active: margin < 1),

so with few features (d + 1 = 65 for the pooled z(t) of a 64-channel net) every H_k is
a small matrix.  All K Hessians come from ONE matrix product, D^T (X (x) X), where D
is the n x K active mask and X (x) X holds the n outer products [x_i, 1][x_i, 1]^T as
rows: the work is dense BLAS instead of liblinear's one-class-at-a-time sparse loops,
which is what makes a 200-class, 5-C, 5-fold grid feasible on a 2-core CPU (measured
in docs/results/transfer.md).  Each Newton direction is taken with a backtracking
(Armijo) line search per class; iterations stop when every class's gradient norm is
below ``tol`` times its value at w = 0 (liblinear's relative criterion).

Used by `jaxode.transfer.svm_cv(solver="newton")` and tested against liblinear in
``tests/test_svm.py``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["OvRLinearSVC", "StandardizedOvRSVC", "fit_ovr_squared_hinge", "cv_grid"]


def _augment(X: np.ndarray) -> np.ndarray:
    return np.concatenate([X, np.ones((X.shape[0], 1), X.dtype)], axis=1)


def _signs(y: np.ndarray, num_classes: int, dtype) -> np.ndarray:
    return np.where(y[:, None] == np.arange(num_classes)[None, :], 1.0, -1.0).astype(dtype)


def _objective(W, Xa, S, C):
    margin = np.maximum(0.0, 1.0 - S * (Xa @ W))
    return 0.5 * np.sum(W * W, axis=0) + C * np.sum(margin * margin, axis=0)


def fit_ovr_squared_hinge(
    X: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    C: float,
    *,
    W0: np.ndarray | None = None,
    outer: np.ndarray | None = None,
    tol: float = 1e-4,
    max_iter: int = 100,
) -> tuple[np.ndarray, int]:
    """Weights (d + 1, K) minimising every f_k (module docstring) for one C.

    **Arguments:** `X` (n, d) features (standardise them first), `y` (n,) labels in
    [0, K), `C` > 0, `W0` a warm start (e.g. the solution at a smaller C), `outer` the
    precomputed outer products of the augmented rows, (n, (d + 1)^2) (reused across C
    values of one fold), `tol` the relative gradient-norm tolerance, `max_iter` Newton
    iterations.

    **Returns:** ``(W, iterations)``.
    """
    Xa = _augment(np.asarray(X, np.float64)).astype(np.float32)
    n, d1 = Xa.shape
    S = _signs(np.asarray(y), num_classes, np.float32)
    if outer is None:
        outer = (Xa[:, :, None] * Xa[:, None, :]).reshape(n, d1 * d1)
    W = np.zeros((d1, num_classes), np.float64) if W0 is None else np.array(W0, np.float64)
    # Gradient at w = 0 (liblinear's reference for the stopping rule): -2C X^T s.
    g0 = np.linalg.norm(-2.0 * C * (Xa.T @ S).astype(np.float64), axis=0)
    Xa64 = Xa.astype(np.float64)
    eye = np.eye(d1)
    it = 0
    for it in range(1, max_iter + 1):
        scores = (Xa @ W.astype(np.float32)).astype(np.float64)
        margin = np.maximum(0.0, 1.0 - S * scores)
        grad = W - 2.0 * C * (Xa.T @ (S * margin).astype(np.float32)).astype(np.float64)
        gnorm = np.linalg.norm(grad, axis=0)
        if np.all(gnorm <= tol * g0):
            break
        active = (margin > 0).astype(np.float32)
        H = (active.T @ outer).astype(np.float64).reshape(num_classes, d1, d1)
        H = eye[None] + 2.0 * C * H
        step = -np.linalg.solve(H, grad.T[:, :, None])[:, :, 0].T  # (d1, K)
        f = _objective(W, Xa64, S, C)
        slope = np.sum(grad * step, axis=0)  # < 0: H is positive definite
        alpha = np.ones(num_classes)
        todo = np.ones(num_classes, bool)
        for _ in range(30):  # Armijo backtracking, per class
            trial = W + alpha[None] * step
            f_new = _objective(trial, Xa64, S, C)
            ok = f_new <= f + 1e-4 * alpha * slope
            todo &= ~ok
            if not todo.any():
                break
            alpha = np.where(todo, 0.5 * alpha, alpha)
        W = W + alpha[None] * step
    return W, it


class OvRLinearSVC:
    """Fitted weights and ``predict`` / ``decision_function`` (scikit-learn's names)."""

    def __init__(self, C: float = 1.0, *, tol: float = 1e-4, max_iter: int = 100):
        self.C, self.tol, self.max_iter = float(C), tol, max_iter

    def fit(self, X, y, num_classes: int | None = None, W0=None, outer=None):
        y = np.asarray(y)
        k = int(y.max()) + 1 if num_classes is None else num_classes
        W, self.n_iter_ = fit_ovr_squared_hinge(X, y, k, self.C, W0=W0, outer=outer,
                                                tol=self.tol, max_iter=self.max_iter)
        self.W_ = W
        self.coef_, self.intercept_ = W[:-1].T, W[-1]
        return self

    def decision_function(self, X):
        return np.asarray(X, np.float64) @ self.coef_.T + self.intercept_

    def predict(self, X):
        return np.argmax(self.decision_function(X), axis=1)


def _standardizer(X):
    mu = X.mean(axis=0)
    sd = X.std(axis=0)
    return mu, np.where(sd > 0, sd, 1.0)  # StandardScaler's rule for constant features


class StandardizedOvRSVC:
    """Standardise with the training features' mean and std, then `OvRLinearSVC`:
    the counterpart of ``Pipeline([StandardScaler(), LinearSVC(dual=False)])``."""

    def __init__(self, C: float = 1.0, *, tol: float = 1e-4):
        self.C, self.tol = C, tol

    def fit(self, X, y):
        X = np.asarray(X, np.float64)
        self.mean_, self.scale_ = _standardizer(X)
        self.svc_ = OvRLinearSVC(self.C, tol=self.tol).fit((X - self.mean_) / self.scale_, y)
        return self

    def predict(self, X):
        return self.svc_.predict((np.asarray(X, np.float64) - self.mean_) / self.scale_)


def cv_grid(X: np.ndarray, y: np.ndarray, Cs: Sequence[float], *, folds: int, seed: int,
            tol: float = 1e-4) -> np.ndarray:
    """Validation accuracy (folds, len(Cs)) of the C grid under stratified k-fold CV
    (shuffled, `seed`), features standardised inside each training fold, every fold's
    C path solved with warm starts in increasing C."""
    from sklearn.model_selection import StratifiedKFold

    X, y = np.asarray(X, np.float64), np.asarray(y)
    k = int(y.max()) + 1
    order = np.argsort(Cs)
    acc = np.zeros((folds, len(Cs)))
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for f, (tr, va) in enumerate(split.split(X, y)):
        mu, sd = _standardizer(X[tr])
        Xtr, Xva = (X[tr] - mu) / sd, (X[va] - mu) / sd
        Xa = _augment(Xtr).astype(np.float32)
        outer = (Xa[:, :, None] * Xa[:, None, :]).reshape(len(tr), -1)
        W = None
        for j in order:
            m = OvRLinearSVC(Cs[j], tol=tol).fit(Xtr, y[tr], k, W0=W, outer=outer)
            W = m.W_
            acc[f, j] = np.mean(m.predict(Xva) == y[va])
    return acc
