"""Transfer of intermediate features to a new task (Carrara et al., Sec. 4.3).

A network trained on CIFAR-10 is frozen; its intermediate representation at "time" t,
globally average-pooled over space, is the feature vector of an image of another data
set (Tiny-ImageNet-200).  A linear classifier on these features measures how
transferable the representation at t is:

- ODE nets: z(t) for t in T = {0, 0.05, ..., 1} from ONE dense-output solve of the ODE
  block (``model.features(x, ts)`` -> `ODEBlock.batched(z0, ts=ts)`), so z(0) is the
  block input and z(1) its output;
- the Residual Net: the outputs of its last seven residual blocks, placed at seven
  evenly spaced points of [0, 1] for plotting beside the ODE nets.

Pieces: `extract_features` (jitted, batched, with a tqdm bar), `cached_features` (an
``.npz`` per model x data set x times, keyed by a hash of the weights), `svm_cv`
(standardise -> LinearSVC, grid over C with stratified k-fold CV, best C refit) and
`linear_probe` (a new linear head trained by gradient descent with optax on the frozen
features at one time t*) and `truncated_classifier` (the network cut at t* with a new
head, for fine-tuning the whole network end to end).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
from typing import Any, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxode.data import augment as aug

__all__ = [
    "ODE_TIMES",
    "SVM_CS",
    "is_ode_model",
    "feature_times",
    "extract_features",
    "model_fingerprint",
    "cached_features",
    "stratified_subset",
    "svm_cv",
    "cached_svm_cv",
    "linear_probe",
    "truncated_classifier",
]

# t = 0, 0.05, ..., 1 (21 points), the paper's sampling of the ODE block's trajectory.
ODE_TIMES: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))
SVM_CS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
RESNET_BLOCKS = 7


def is_ode_model(model) -> bool:
    """True for models with an ODE block (`ODENetClassifier`), False for residual nets."""
    return hasattr(model, "ode")


def feature_times(model, ts: Sequence[float] = ODE_TIMES) -> np.ndarray:
    """The time of each feature `extract_features` returns: `ts` for ODE nets; for a
    residual net, its last (up to seven) blocks spread evenly over [0, 1]."""
    if is_ode_model(model):
        return np.asarray(ts, dtype=np.float64)
    k = min(RESNET_BLOCKS, len(model.blocks))
    return np.linspace(0.0, 1.0, k)


def _prepare(images, mean, std):
    x = aug.to_model_input(images)
    if mean is not None:
        x = aug.normalize(x, mean, std)
    return x


@eqx.filter_jit
def _features_batch(model, images, ts, mean, std, through_head):
    x = _prepare(images, mean, std)
    if is_ode_model(model):
        t0 = jnp.asarray(model.ode.t0, jnp.float32)
        t1 = jnp.asarray(model.ode.t1, jnp.float32)
        # Times are given on [0, 1]; map them onto the block's interval [t0, t1].
        return model.features(x, jnp.clip(t0 + ts * (t1 - t0), t0, t1), through_head=through_head)
    f = model.features(x, through_head=through_head)
    return f[:, -min(RESNET_BLOCKS, f.shape[1]):]


def extract_features(
    model,
    images: np.ndarray,
    *,
    ts: Sequence[float] = ODE_TIMES,
    batch_size: int = 250,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    through_head: bool = False,
    progress: bool = True,
    desc: str = "features",
) -> np.ndarray:
    """Pooled intermediate features of uint8 NHWC `images`: float32 (N, T, C).

    **Arguments:**

    - `model`: a trained classifier (`ODENetClassifier` or `ResNetClassifier`).
    - `images`: uint8 (N, H, W, C), the size the model was trained on.
    - `ts`: feature times on [0, 1] (ODE nets; mapped onto the block's [t0, t1]);
      ignored for residual nets (their last seven blocks).
    - `batch_size`: images per jitted call (the last, smaller batch compiles once more).
    - `mean`, `std`: the per-channel normalisation the model was trained with (None:
      inputs in [0, 1], as the training task without normalisation).
    - `through_head`: pool ReLU(GN(z)) instead of z (see `features` of the models).
    """
    from tqdm.auto import tqdm

    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"extract_features takes uint8 images (N, H, W, C), got {images.dtype} {images.shape}."
        )
    ts_arr = jnp.asarray(np.asarray(ts, dtype=np.float32))
    if is_ode_model(model) and (np.any(np.diff(np.asarray(ts)) <= 0) or min(ts) < 0 or max(ts) > 1):
        raise ValueError(f"feature times must increase within [0, 1], got {tuple(ts)}.")
    m = None if mean is None else jnp.asarray(mean, jnp.float32)
    s = None if std is None else jnp.asarray(std, jnp.float32)
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        f = _features_batch(model, jnp.asarray(images[start : start + batch_size]), ts_arr, m, s, through_head)
        out.append(np.asarray(f, dtype=np.float32))
    return np.concatenate(out, axis=0)


def model_fingerprint(model) -> str:
    """A hash of every array in `model` and of its static structure (solver settings
    included), so that cached features follow the weights, not a file name."""
    h = hashlib.sha1()
    arrays, static = eqx.partition(model, eqx.is_array)
    for leaf in jax.tree_util.tree_leaves(arrays):
        a = np.asarray(leaf)
        h.update(str((a.shape, a.dtype)).encode())
        h.update(a.tobytes())
    # Static parts may print object addresses ("<... object at 0x7f...>", e.g. the
    # loop-friendly convolution's custom_jvp), which differ between processes.
    structure = re.sub(r" at 0x[0-9a-fA-F]+", "", str(jax.tree_util.tree_structure(static)))
    h.update(structure.encode())
    return h.hexdigest()[:16]


def cached_features(
    cache_dir: str,
    model,
    images: np.ndarray,
    *,
    data_key: str,
    ts: Sequence[float] = ODE_TIMES,
    **kwargs: Any,
) -> np.ndarray:
    """`extract_features` through an ``.npz`` file in `cache_dir`.

    The file name hashes the model's weights (`model_fingerprint`), `data_key` (name the
    data set and its subset), the times and the other keyword arguments; the file is
    written atomically (temporary name, then `os.replace`).
    """
    key = hashlib.sha1(
        repr((model_fingerprint(model), data_key, tuple(float(t) for t in ts),
              sorted((k, repr(v)) for k, v in kwargs.items() if k not in ("progress", "desc")),
              len(images))).encode()
    ).hexdigest()[:20]
    path = os.path.join(cache_dir, f"features-{key}.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            return z["features"]
    feats = extract_features(model, images, ts=ts, **kwargs)
    os.makedirs(cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=cache_dir)
    with os.fdopen(fd, "wb") as f:
        np.savez(f, features=feats, times=np.asarray(ts))
    os.replace(tmp, path)
    return feats


def stratified_subset(labels: np.ndarray, *, classes: int | None, per_class: int | None,
                      seed: int = 0) -> np.ndarray:
    """Indices of the first `classes` class ids with `per_class` random examples each
    (None = all), sorted; labels of the subset can be re-numbered with `np.unique`."""
    rng = np.random.default_rng(seed)
    ids = np.unique(labels)
    if classes is not None:
        if classes > len(ids):
            raise ValueError(f"classes={classes} but the data have only {len(ids)} classes.")
        ids = ids[:classes]
    out = []
    for c in ids:
        idx = np.flatnonzero(labels == c)
        if per_class is not None:
            if per_class > len(idx):
                raise ValueError(f"per_class={per_class} but class {c} has {len(idx)} examples.")
            idx = rng.choice(idx, per_class, replace=False)
        out.append(idx)
    return np.sort(np.concatenate(out))


def _svm_pipeline(n_samples: int, n_features: int, seed: int, max_iter: int):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    # liblinear: the primal problem is cheaper when there are more samples than
    # features, the dual one otherwise.
    dual = not n_samples > n_features
    return Pipeline([
        ("scale", StandardScaler()),
        ("svc", LinearSVC(dual=dual, max_iter=max_iter, random_state=seed)),
    ])


def svm_cv(
    X: np.ndarray,
    y: np.ndarray,
    *,
    Cs: Sequence[float] = SVM_CS,
    folds: int = 5,
    seed: int = 0,
    n_jobs: int = -1,
    max_iter: int = 2000,
    solver: str = "sklearn",
) -> dict[str, Any]:
    """Linear SVM with C chosen by stratified k-fold cross-validation.

    `solver`: ``"sklearn"`` (default: liblinear through scikit-learn's `LinearSVC`
    and `GridSearchCV`) or ``"newton"`` (`jaxode.svm`: the same objective, all
    classes at once by Newton's method with warm starts along the C grid; same folds,
    same standardisation; 2x to 10x faster than liblinear on the 2-core CPU,
    see docs/results/transfer.md).  ``dual`` is reported False for "newton" (it solves
    the primal).

    Features are standardised (fitted inside each training fold), a one-vs-rest
    `LinearSVC` (``dual`` = n_samples <= n_features) is fitted for every C of the grid
    on every fold, and the C with the best mean validation accuracy is refitted on all
    of `X`.

    **Returns:** a dict with ``best_C``, ``cv_accuracy`` (mean validation accuracy over
    the folds at the best C: the number reported; being the maximum over the grid, it is
    slightly optimistic), ``cv_std`` (its standard deviation over folds),
    ``cv_accuracy_per_C`` and ``model`` (the refitted pipeline).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    X = np.asarray(X, dtype=np.float64)
    if solver == "newton":
        return _svm_cv_newton(X, np.asarray(y), Cs, folds, seed)
    if solver != "sklearn":
        raise ValueError(f"svm_cv: unknown solver {solver!r}; use 'sklearn' or 'newton'.")
    pipe = _svm_pipeline(X.shape[0], X.shape[1], seed, max_iter)
    search = GridSearchCV(
        pipe,
        {"svc__C": list(Cs)},
        cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed),
        scoring="accuracy",
        n_jobs=n_jobs,
        refit=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, y)
    i = int(search.best_index_)
    return {
        "best_C": float(search.best_params_["svc__C"]),
        "cv_accuracy": float(search.best_score_),
        "cv_std": float(search.cv_results_["std_test_score"][i]),
        "cv_accuracy_per_C": {float(c): float(s) for c, s in
                              zip(Cs, search.cv_results_["mean_test_score"])},
        "dual": bool(pipe.named_steps["svc"].dual),
        "model": search.best_estimator_,
    }


def _svm_cv_newton(X, y, Cs, folds, seed):
    from jaxode import svm

    acc = svm.cv_grid(X, y, tuple(Cs), folds=folds, seed=seed)
    mean = acc.mean(axis=0)
    i = int(np.argmax(mean))  # the first of equal scores, as GridSearchCV's ranking
    return {
        "best_C": float(Cs[i]),
        "cv_accuracy": float(mean[i]),
        "cv_std": float(acc[:, i].std()),
        "cv_accuracy_per_C": {float(c): float(a) for c, a in zip(Cs, mean)},
        "dual": False,
        "model": svm.StandardizedOvRSVC(Cs[i]).fit(X, y),
    }


def cached_svm_cv(cache_dir: str, X: np.ndarray, y: np.ndarray, **kwargs: Any) -> dict[str, Any]:
    """`svm_cv` through a small JSON file in `cache_dir`, keyed by a hash of the
    features, the labels and the settings, so that a re-run (for example one that adds
    a model to the figure) repeats no grid search.  The refitted ``model`` is not
    cached and is absent from the result."""
    import json

    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.ascontiguousarray(y)
    h = hashlib.sha1(X.tobytes())
    h.update(y.tobytes())
    h.update(repr((X.shape, sorted((k, repr(v)) for k, v in kwargs.items() if k != "n_jobs"))).encode())
    path = os.path.join(cache_dir, f"svm-{h.hexdigest()[:20]}.json")
    if os.path.exists(path):
        with open(path) as f:
            out = json.load(f)
        out["cv_accuracy_per_C"] = {float(c): a for c, a in out["cv_accuracy_per_C"].items()}
        return out
    out = svm_cv(X, y, **kwargs)
    out.pop("model")
    os.makedirs(cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=cache_dir)
    with os.fdopen(fd, "w") as f:
        json.dump(out, f)
    os.replace(tmp, path)
    return out


def linear_probe(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    num_classes: int,
    epochs: int = 100,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, Any]:
    """Train a new linear head W z + b on frozen pooled features by SGD with momentum
    and weight decay (optax), full cross-entropy.

    Because the network up to z(t*) is frozen and used without augmentation, training
    the head on its cached pooled features is the same optimisation as back-propagating
    through "frozen net -> GAP -> new head", only cheaper.  Features are standardised
    with the training split's statistics.

    **Returns:** ``val_accuracy``, ``train_accuracy`` and the final ``train_loss``.
    """
    import optax

    mu = X_train.mean(axis=0)
    sd = X_train.std(axis=0) + 1e-6
    xt = jnp.asarray((X_train - mu) / sd, jnp.float32)
    xv = jnp.asarray((X_val - mu) / sd, jnp.float32)
    yt = jnp.asarray(y_train, jnp.int32)
    key = jax.random.PRNGKey(seed)
    k_w, k_perm = jax.random.split(key)
    params = {
        "W": jax.random.normal(k_w, (xt.shape[1], num_classes), jnp.float32) * 0.01,
        "b": jnp.zeros((num_classes,), jnp.float32),
    }
    # SGD with momentum and decoupled-free L2 (optax's Adam bias correction mixes a
    # Python float with an int32 count, which strict dtype promotion rejects).
    tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=0.9))
    opt = tx.init(params)

    def loss_fn(p, x, y):
        logits = x @ p["W"] + p["b"]
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    n = xt.shape[0]
    batch_size = min(batch_size, n)
    steps = max(1, n // batch_size)

    @jax.jit
    def epoch(carry, k):
        p, o = carry
        perm = jax.random.permutation(k, n)[: steps * batch_size].reshape(steps, batch_size)

        def step(c, idx):
            p, o = c
            loss, g = jax.value_and_grad(loss_fn)(p, xt[idx], yt[idx])
            upd, o = tx.update(g, o, p)
            return (optax.apply_updates(p, upd), o), loss

        (p, o), losses = jax.lax.scan(step, (p, o), perm)
        return (p, o), jnp.mean(losses)

    (params, opt), losses = jax.lax.scan(epoch, (params, opt), jax.random.split(k_perm, epochs))

    def acc(x, y):
        return float(np.mean(np.asarray(jnp.argmax(x @ params["W"] + params["b"], -1)) == y))

    return {
        "val_accuracy": acc(xv, np.asarray(y_val)),
        "train_accuracy": acc(xt, np.asarray(y_train)),
        "train_loss": float(losses[-1]),
    }


def truncated_classifier(model, t: float, num_classes: int, *, key):
    """The network up to its feature at time `t` in [0, 1], with a new, untrained head
    (GN -> ReLU -> global average pool -> linear to `num_classes`), for fine-tuning the
    whole network on the new task ("fine-tune" transfer recipe, beside the SVM).

    - ODE nets: the same stem and ODE field, integrated on [t0, t0 + t (t1 - t0)], so
      the head sees z(t) -- the state whose pooled value `extract_features` returns at
      `t`.  ``t = 0`` is refused (it would be the stem alone; use a residual net's
      stem or the SVM on z(0)).
    - Residual nets: the stem and the residual blocks up to the one `feature_times`
      places at `t` (``t`` must be one of those seven points, to 1e-6).

    The result is an ordinary classifier (``model(x) -> (logits, aux)``) that
    `jaxode.train.fit` trains; its dropout is 0.
    """
    from jaxode.models.classifiers import Head

    times = feature_times(model)
    if is_ode_model(model):
        if not 0.0 < t <= 1.0:
            raise ValueError(f"truncated_classifier: t must lie in (0, 1] for an ODE net, got {t!r}.")
        t0 = jnp.asarray(model.ode.t0)
        t1 = jnp.asarray(model.ode.t1)
        new_t1 = (t0 + t * (t1 - t0)).astype(t1.dtype)
        channels = model.head.linear.in_features
        return eqx.tree_at(lambda m: (m.ode.t1, m.head), model,
                           (new_t1, Head(channels, num_classes, 0.0, key=key)))
    j = np.flatnonzero(np.abs(times - t) < 1e-6)
    if len(j) == 0:
        raise ValueError(
            f"truncated_classifier: a residual net has features only at t in "
            f"{tuple(round(float(x), 4) for x in times)}, got {t!r}."
        )
    keep = len(model.blocks) - len(times) + int(j[0]) + 1
    channels = model.head.linear.in_features
    return eqx.tree_at(lambda m: (m.blocks, m.head), model,
                       (tuple(model.blocks[:keep]), Head(channels, num_classes, 0.0, key=key)))
