"""Linear probes and the cross-correlation matrix of notebook 03, against independent references."""
import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import RidgeClassifier
from sklearn.metrics import balanced_accuracy_score

from cmcr_lite.classes import class_index
from cmcr_lite.losses.orthogonality import orthogonality_loss
from cmcr_lite.analysis.probes import balanced_accuracy, cross_correlation, point_features, ridge_probe, twin_probe


def blobs(n=300, c=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n) * 7 + 2  # labels need not be 0..K-1
    x = rng.normal(size=(n, c)) * rng.uniform(0.1, 10, c) + rng.normal(size=(k * 7 + 2, c))[y] * 3
    return torch.from_numpy(x), y


def test_ridge_matches_augmented_least_squares():
    """Ridge = least squares on [X; sqrt(alpha) I] after centring (numpy reference)."""
    x, y = blobs()
    test, _ = blobs(seed=1)
    alpha = 3.0
    xs = ((x - x.mean(0)) / x.std(0, unbiased=False)).numpy()
    ts = ((test - x.mean(0)) / x.std(0, unbiased=False)).numpy()
    classes = np.unique(y)
    t = np.where(y[:, None] == classes[None], 1.0, -1.0)
    a = np.vstack([xs, math.sqrt(alpha) * np.eye(xs.shape[1])])
    b = np.vstack([t - t.mean(0), np.zeros((xs.shape[1], len(classes)))])
    w = np.linalg.lstsq(a, b, rcond=None)[0]
    expected = classes[(ts @ w + t.mean(0)).argmax(1)]
    np.testing.assert_array_equal(ridge_probe(x, y, test, alpha), expected)


def test_ridge_matches_sklearn_ridge_classifier():
    x, y = blobs(seed=2)
    test, _ = blobs(seed=3)
    mean, std = x.mean(0), x.std(0, unbiased=False)
    ref = RidgeClassifier(alpha=0.5).fit(((x - mean) / std).numpy(), y).predict(((test - mean) / std).numpy())
    np.testing.assert_array_equal(ridge_probe(x, y, test, alpha=0.5), ref)


def test_ridge_separates_separable_classes_and_checks_inputs():
    x = torch.tensor([[0.0, 1], [0.1, 1], [5, 1], [5.2, 1]])  # constant column: std 0 must not break it
    assert ridge_probe(x, [3, 3, 9, 9], x, alpha=1e-3).tolist() == [3, 3, 9, 9]
    with pytest.raises(ValueError, match="two classes"):
        ridge_probe(x, [1, 1, 1, 1], x)
    with pytest.raises(ValueError, match="test_x"):
        ridge_probe(x, [0, 0, 1, 1], x[:, :1])


def test_balanced_accuracy_by_hand_and_sklearn():
    y_true = [1, 1, 1, 1, 2, 2]
    y_pred = [1, 1, 1, 2, 1, 2]
    assert balanced_accuracy(y_true, y_pred) == pytest.approx((3 / 4 + 1 / 2) / 2)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    assert balanced_accuracy(a, b) == pytest.approx(balanced_accuracy_score(a, b))


def test_twin_probe_reads_the_right_points_and_reports_missing_classes():
    car, truck, bus, cv = (class_index(n) for n in ("car", "truck", "bus", "construction_vehicle"))
    rng = np.random.default_rng(0)
    y = np.repeat([car, truck, bus, cv], 50)
    x = torch.from_numpy(rng.normal(size=(200, 3)))
    x[y == car, 0] += 10  # car vs truck: separable on feature 0; bus vs cv: pure noise
    test_y = y[y != truck]  # no truck in the test points
    acc = twin_probe(x, y, x[torch.from_numpy(y != truck)], test_y, [("car", "truck"), ("bus", "construction_vehicle")])
    assert math.isnan(acc[("car", "truck")])
    assert 0.0 <= acc[("bus", "construction_vehicle")] <= 1.0
    full = twin_probe(x, y, x, y, [("car", "truck")])
    assert full[("car", "truck")] == 1.0


def test_cross_correlation_by_hand_and_against_the_loss():
    shared = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    specific = torch.tensor([[1.0, 1.0], [0.0, -5.0], [2.0, 0.0]], dtype=torch.float64)
    r2 = math.sqrt(2)
    # rows normalised: F = (0.6, 0.8), (1, 0), (0, 1); G = (1/r2, 1/r2), (0, -1), (1, 0)
    expected = torch.tensor([[0.6 / r2, abs(0.6 / r2 - 1)], [0.8 / r2 + 1, 0.8 / r2]], dtype=torch.float64) / 3
    c = cross_correlation(shared, specific)
    torch.testing.assert_close(c, expected)
    torch.testing.assert_close(3 * torch.linalg.matrix_norm(c) / 2 ** 2, orthogonality_loss(shared, specific))
    with pytest.raises(ValueError, match="cross_correlation"):
        cross_correlation(shared, specific[:2])


def test_point_features_match_the_model(synthetic_root):
    from cmcr_lite.cmcr import ABLATION_STEPS, CMCRModel
    from cmcr_lite.data.nuscenes_loader import NuScenesKeyframes
    from cmcr_lite.models.image_encoder import SmallImageTeacher
    from cmcr_lite.models.minkunet import MinkUNetConfig

    torch.manual_seed(0)
    kf = NuScenesKeyframes(synthetic_root, "v1.0-synthetic", split="val")
    kf.sample_tokens = kf.sample_tokens[:1]
    model = CMCRModel(MinkUNetConfig.lite(planes=(8,) * 8, init_dim=8), SmallImageTeacher(width=8, stride=4),
                      feature_dim=16, options=ABLATION_STEPS["+ decoupling"])
    model.train()
    feats = point_features(model, kf, crop_size=(56, 104))
    n = len(kf[0].points)
    assert feats["shared"].shape == feats["specific"].shape == (n, 16) and feats["trunk"].shape == (n, 8)
    assert feats["labels"].shape == (n,) and feats["shared_2d"].shape[1] == 16
    torch.testing.assert_close(feats["shared"].norm(dim=1), torch.ones(n))
    # the specific head is a 1x1 convolution of the trunk: G = trunk W + b at every point
    w, b = model.head3d_specific.kernel.detach(), model.head3d_specific.bias.detach()
    torch.testing.assert_close(feats["specific"], feats["trunk"] @ w.reshape(8, 16) + b, atol=1e-5, rtol=1e-5)
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="specific head"):
        point_features(CMCRModel(MinkUNetConfig.lite(planes=(8,) * 8, init_dim=8), SmallImageTeacher(width=8, stride=4),
                                 feature_dim=16, options=ABLATION_STEPS["contrastive only"]), kf)
