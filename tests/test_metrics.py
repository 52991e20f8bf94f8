"""Metrics against hand-computed numbers."""
import numpy as np
import pytest

from clutils import metrics

# after task 1: [0.9, 0.1, 0.2]; after task 2: [0.6, 0.8, 0.3]; after task 3: [0.5, 0.7, 0.9]
R = np.array([[0.9, 0.1, 0.2],
              [0.6, 0.8, 0.3],
              [0.5, 0.7, 0.9]])


def test_average_accuracy():
    assert metrics.average_accuracy(R) == pytest.approx((0.5 + 0.7 + 0.9) / 3)


def test_forgetting_uses_best_earlier_accuracy():
    # task 1: max(0.9, 0.6) - 0.5 = 0.4 ; task 2: max(0.1, 0.8) - 0.7 = 0.1
    assert metrics.forgetting(R, per_task=True) == pytest.approx([0.4, 0.1])
    assert metrics.forgetting(R) == pytest.approx(0.25)


def test_forgetting_differs_from_bwt_when_peak_is_not_the_diagonal():
    # task 1 learned to 0.5, improved to 0.9 by task 2, then fell to 0.7
    R3 = np.array([[0.5, 0.0, 0.0], [0.9, 0.6, 0.0], [0.7, 0.6, 0.9]])
    assert metrics.forgetting(R3, per_task=True) == pytest.approx([0.2, 0.0])  # from its best, 0.9
    assert metrics.backward_transfer(R3) == pytest.approx(0.1)  # ((0.7-0.5) + (0.6-0.6)) / 2 > 0


def test_backward_transfer():
    # ((0.5 - 0.9) + (0.7 - 0.8)) / 2 = -0.25
    assert metrics.backward_transfer(R) == pytest.approx(-0.25)


def test_forward_transfer_needs_random_reference():
    b = [0.1, 0.1, 0.1]
    # ((R[0,1] - b1) + (R[1,2] - b2)) / 2 = ((0.1-0.1) + (0.3-0.1)) / 2 = 0.1
    assert metrics.forward_transfer(R, b) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="one accuracy per task"):
        metrics.forward_transfer(R, [0.1, 0.1])


def test_intransigence():
    ref = [1.0, 0.9, 0.95]
    # ((1-0.9) + (0.9-0.8) + (0.95-0.9)) / 3 = 0.25/3
    assert metrics.intransigence(R, ref) == pytest.approx(0.25 / 3)


def test_learning_accuracy_and_summary():
    s = metrics.summary(R)
    assert s["learning_acc"] == pytest.approx((0.9 + 0.8 + 0.9) / 3)
    assert s["acc"] == pytest.approx(0.7) and s["bwt"] == pytest.approx(-0.25)


def test_single_task_and_bad_shapes():
    assert metrics.forgetting([[0.7]]) == 0.0 and metrics.backward_transfer([[0.7]]) == 0.0
    with pytest.raises(ValueError, match="square"):
        metrics.average_accuracy(np.zeros((2, 3)))
