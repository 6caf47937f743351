"""The fine-tune comparison of `experiments.transfer` at the chosen feature time t*
(Carrara et al., Sec. 4.3): the SVM against a new linear head trained on the frozen
features, and against the whole network cut at t* fine-tuned with a new head
(`jaxode.transfer.truncated_classifier`).  All are scored on one held-out stratified
80/20 split of the target images."""

from __future__ import annotations

import time

import numpy as np


def _split(y, seed):
    """The held-out split shared by every fine-tune recipe: stratified 80/20."""
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=seed)


def finetune_compare(tr, X, y, n_classes, Cs, args):
    """SVM (C by CV on the 80 %) and, unless --finetune-mode full, a linear head
    trained by gradient descent on the frozen features; both scored on the 20 %."""
    i_tr, i_va = _split(y, args.seed)
    svm = tr.svm_cv(X[i_tr], y[i_tr], Cs=Cs, folds=args.folds, seed=args.seed,
                    n_jobs=args.n_jobs, solver=args.svm_solver)
    out = {"split": "stratified 80/20", "n_train": int(len(i_tr)), "n_val": int(len(i_va)),
           "svm_val_accuracy": float(np.mean(svm["model"].predict(X[i_va]) == y[i_va])),
           "svm_best_C": svm["best_C"]}
    if args.finetune_mode in ("head", "both"):
        head = tr.linear_probe(X[i_tr], y[i_tr], X[i_va], y[i_va], num_classes=n_classes,
                               epochs=args.finetune_epochs, seed=args.seed)
        out.update(head_val_accuracy=head["val_accuracy"],
                   head_train_accuracy=head["train_accuracy"])
    return out


def finetune_full(tr, entry, images, y, n_classes, t, args, run_path, log):
    """Fine-tune the whole network cut at t (`jaxode.transfer.truncated_classifier`)
    with a new head, on the same 80/20 split as the SVM; a run folder of its own."""
    import jax

    from jaxode.data import Dataset
    from jaxode.train import ClassificationTask, RunDir, TrainConfig, dataset_batches, fit

    if tr.is_ode_model(entry["model"]) and t <= 0.0:
        log("full fine-tune skipped: at t* = 0 an ODE net has no ODE block left "
            "(choose --finetune-t > 0)")
        return {"full_skipped": "t* = 0"}
    i_tr, i_va = _split(y, args.seed)
    names = tuple(str(c) for c in range(n_classes))

    def subset(i, nm):
        return Dataset(images[i], y[i].astype(np.int32), n_classes, names, nm)

    train, val = subset(i_tr, "tiny-imagenet/val[80%]"), subset(i_va, "tiny-imagenet/val[20%]")
    model = tr.truncated_classifier(entry["model"], t, n_classes,
                                    key=jax.random.PRNGKey(args.seed))
    mean, std = entry["norm"] if entry["norm"] is not None else (None, None)
    task = ClassificationTask(crop_padding=4, flip=True,
                              mean=None if mean is None else tuple(mean),
                              std=None if std is None else tuple(std))
    config = TrainConfig(epochs=args.full_epochs, batch_size=min(50, len(train)),
                         lr=args.full_lr, weight_decay=1e-4, lr_schedule="cosine",
                         seed=args.seed)
    run = RunDir(run_path, {"t": t, "source": entry["source"], "train": config.to_dict(),
                            "n_train": len(train), "n_val": len(val)})
    t0 = time.perf_counter()
    res = fit(model, task,
              lambda e: dataset_batches(train, config.batch_size, seed=(args.seed, e),
                                        drop_last=True),
              lambda: dataset_batches(val, 250, shuffle=False), config=config, run=run, log=log)
    return {"full_val_accuracy": float(res.history[-1]["eval_acc"]),
            "full_train_accuracy": float(res.history[-1].get("train_acc", float("nan"))),
            "full_epochs": args.full_epochs, "full_lr": args.full_lr,
            "full_seconds": time.perf_counter() - t0, "full_run": run.path}
