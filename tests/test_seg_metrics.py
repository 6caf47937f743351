"""Segmentation metrics against hand-computed values, scikit-learn and PyTorch."""

import numpy as np
import pytest

from jaxode.train.seg_metrics import (confusion_matrix, cross_entropy, iou_from_confusion,
                                      miou, pixel_accuracy)


def test_hand_made_case():
    # labels / predictions of a 2x3 image, 3 classes, ignore label 9
    labels = np.array([[0, 1, 9], [1, 2, 9]])
    preds = np.array([[0, 1, 2], [0, 2, 1]])
    cm = np.asarray(confusion_matrix(labels, preds, 3, ignore_label=9))
    # pixels kept: (0,0) (1,1) (1,0) (2,2): class 1 once right, once called 0
    np.testing.assert_array_equal(cm, [[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    iou = iou_from_confusion(cm)
    np.testing.assert_allclose(iou, [1 / 2, 1 / 2, 1.0])
    assert miou(cm) == pytest.approx(2 / 3)
    assert pixel_accuracy(cm) == pytest.approx(3 / 4)


def test_absent_class_is_excluded_and_matrices_add():
    labels = np.array([0, 0, 1, 1])
    preds = np.array([0, 1, 1, 1])
    cm = np.asarray(confusion_matrix(labels, preds, 4))
    iou = iou_from_confusion(cm)
    assert np.isnan(iou[2]) and np.isnan(iou[3])
    assert miou(cm) == pytest.approx((1 / 2 + 2 / 3) / 2)
    # accumulating two halves gives the whole
    cm2 = np.asarray(confusion_matrix(labels[:2], preds[:2], 4)) + np.asarray(
        confusion_matrix(labels[2:], preds[2:], 4))
    np.testing.assert_array_equal(cm, cm2)


def test_against_sklearn_random():
    from sklearn.metrics import confusion_matrix as sk_cm, jaccard_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 12, size=(3, 17, 19))  # 11 = ignore (CamVid void)
    preds = rng.integers(0, 11, size=(3, 17, 19))
    cm = np.asarray(confusion_matrix(labels, preds, 11, ignore_label=11))
    keep = labels.ravel() != 11
    ref = sk_cm(labels.ravel()[keep], preds.ravel()[keep], labels=list(range(11)))
    np.testing.assert_array_equal(cm, ref)
    ref_iou = jaccard_score(labels.ravel()[keep], preds.ravel()[keep], average=None,
                            labels=list(range(11)))
    np.testing.assert_allclose(iou_from_confusion(cm), ref_iou, rtol=1e-12)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)


def test_cross_entropy_matches_torch_ignore_index():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 4, 6)).astype(np.float32)
    labels = rng.integers(0, 6, size=(2, 4, 6))  # 5 = ignore
    ours = float(cross_entropy(logits, labels, ignore_label=5))
    ref = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels),
                                            ignore_index=5).item()
    assert ours == pytest.approx(ref, rel=1e-5)
