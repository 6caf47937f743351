"""`jaxode.svm` against liblinear (scikit-learn's LinearSVC, dual=False): the same
minimiser of the squared-hinge OvR objective, the same predictions, the same
cross-validated grid."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from jaxode import svm
from jaxode import transfer as tr


def _blobs(seed, k=6, per=25, d=8, spread=0.6):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), per)
    X = rng.normal(0, 1, (k, d))[y] * spread + rng.normal(0, 1, (len(y), d))
    return X, y


@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_newton_matches_liblinear_minimiser(C):
    X, y = _blobs(0)
    X = StandardScaler().fit_transform(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = LinearSVC(C=C, dual=False, tol=1e-10, max_iter=100_000).fit(X, y)
    ours = svm.OvRLinearSVC(C, tol=1e-7).fit(X, y)
    W_ref = np.vstack([ref.coef_.T, ref.intercept_[None]])
    Xa, S = svm._augment(X), svm._signs(y, 6, np.float64)
    f_ours, f_ref = svm._objective(ours.W_, Xa, S, C), svm._objective(W_ref, Xa, S, C)
    # Same (strictly convex) objective, so the same minimiser: objective values agree
    # to solver precision and ours is never noticeably worse; weights agree.
    assert np.all(f_ours <= f_ref * (1 + 1e-6))
    assert np.all(np.abs(f_ours - f_ref) <= 1e-5 * f_ref)
    assert np.abs(ours.W_ - W_ref).max() <= 1e-3 * np.abs(W_ref).max()
    assert np.array_equal(ours.predict(X), ref.predict(X))


def test_newton_grid_matches_gridsearch():
    X, y = _blobs(1, k=5, per=30, d=6, spread=0.5)
    Cs = (0.01, 0.1, 1.0, 10.0)
    ref = tr.svm_cv(X, y, Cs=Cs, folds=3, seed=2, n_jobs=1, max_iter=100_000)
    new = tr.svm_cv(X, y, Cs=Cs, folds=3, seed=2, solver="newton")
    # One validation image of 150 is 1/150: allow a single flipped prediction per C.
    for c in Cs:
        assert abs(new["cv_accuracy_per_C"][c] - ref["cv_accuracy_per_C"][c]) <= 1 / 150 + 1e-12
    assert new["cv_accuracy"] == max(new["cv_accuracy_per_C"].values())
    assert np.mean(new["model"].predict(X) == ref["model"].predict(X)) >= 0.99
    with pytest.raises(ValueError, match="unknown solver"):
        tr.svm_cv(X, y, solver="lbfgs")
