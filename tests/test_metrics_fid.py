"""Frechet distance against closed forms; the FID Inception's file loading; FID end to end."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from conftest import TensorDataset

from progan.metrics import MetricError, evaluate_metrics, feature_statistics, frechet_distance
from progan.metrics.fid import fid_from_features
from progan.metrics.inception import WEIGHTS_SHA256_PREFIX, FIDInceptionV3, file_sha256, load_inception


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- Frechet distance -------------------------------------------------------------------------
def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    var1, var2 = rng.uniform(0.1, 3.0, 16), rng.uniform(0.1, 3.0, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_rotated_gaussians_matches_closed_form():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))  # a common eigenbasis, not the axes
    var1, var2 = rng.uniform(0.5, 2.0, 8), rng.uniform(0.5, 2.0, 8)
    sigma1, sigma2 = q @ np.diag(var1) @ q.T, q @ np.diag(var2) @ q.T
    mu = rng.normal(size=8)
    expected = np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    assert frechet_distance(mu, sigma1, mu, sigma2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_agrees_with_the_sqrtm_formula():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(12, 12)), rng.normal(size=(12, 12))
    sigma1, sigma2 = a @ a.T + np.eye(12), b @ b.T + 0.5 * np.eye(12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real  # pytorch-fid / TTUR's route
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)


def test_singular_covariances_match_the_low_rank_identity():
    # With S = A'A and T = B'B: tr((S T)^(1/2)) is the nuclear norm of A B' (few samples, many features).
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(3, 40)), rng.normal(size=(4, 40))
    expected = np.sum(a * a) + np.sum(b * b) - 2 * np.linalg.norm(a @ b.T, "nuc")
    zero = np.zeros(40)
    assert frechet_distance(zero, a.T @ a, zero, b.T @ b) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("samples", [5, 40])  # fewer and more samples than dimensions
def test_fid_from_features_equals_the_distance_of_their_statistics(samples):
    rng = np.random.default_rng(6)
    features = rng.normal(size=(samples, 16)) * rng.uniform(0.5, 2, 16) + 1.0
    reference = rng.normal(size=(60, 16))
    mu_ref, sigma_ref = feature_statistics(reference)
    expected = frechet_distance(*feature_statistics(features), mu_ref, sigma_ref)
    assert fid_from_features(features, mu_ref, sigma_ref) == pytest.approx(expected, rel=1e-9)


def test_identical_statistics_give_zero_even_when_singular():
    features = np.random.default_rng(3).normal(size=(5, 64))  # 5 samples: rank-4 covariance
    mu, sigma = feature_statistics(features)
    centred = features - features.sum(0) / len(features)  # the unbiased covariance, written out
    np.testing.assert_allclose(mu, features.sum(0) / 5)
    np.testing.assert_allclose(sigma, centred.T @ centred / (5 - 1), rtol=1e-10, atol=1e-12)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(MetricError, match="do not match"):
        frechet_distance(mu, sigma, mu[:3], sigma[:3, :3])


# -- the Inception network and its weights file -----------------------------------------------
def random_inception(seed: int = 0) -> FIDInceptionV3:
    """Random weights that keep activations O(1) (the default init shrinks them to ~1e-8)."""
    torch.manual_seed(seed)
    model = FIDInceptionV3()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.8, 1.2)
    return model.eval()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    torch.save(random_inception().state_dict(), path)
    return path


def test_network_has_the_ported_files_names_and_shapes():
    state = FIDInceptionV3().state_dict()
    assert tuple(state["Conv2d_1a_3x3.conv.weight"].shape) == (32, 3, 3, 3)
    assert tuple(state["Mixed_5b.branch_pool.conv.weight"].shape) == (32, 192, 1, 1)
    assert tuple(state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape) == (192, 192, 1, 7)
    assert tuple(state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape) == (384, 384, 3, 1)
    assert tuple(state["fc.weight"].shape) == (1008, 2048)
    assert not any(name.startswith("AuxLogits") for name in state)
    # torchvision's Inception-v3 (27,161,264) without its aux head, with a 1008-way classifier.
    assert sum(p.numel() for p in FIDInceptionV3().parameters()) == 23_850_960


def test_loading_checks_the_sha256_prefix(weights_file):
    with pytest.raises(MetricError, match=f"SHA-256 starts with .*expected {WEIGHTS_SHA256_PREFIX}"):
        load_inception(weights_file)
    model, sha256 = load_inception(weights_file, verify=False)
    assert sha256 == file_sha256(weights_file) and not model.training


def test_loading_a_file_without_batchnorm_counters(tmp_path):
    state = {k: v for k, v in random_inception().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    model, _ = load_inception(tmp_path / "old.pth", verify=False)
    torch.testing.assert_close(model.state_dict()["Mixed_7c.branch_pool.bn.running_var"],
                               state["Mixed_7c.branch_pool.bn.running_var"])


@pytest.mark.parametrize("damage, message", [
    ("missing", "does not exist"),
    ("garbage", "not a readable PyTorch weights file"),
    ("object", "refused"),
    ("shape", r"Mixed_6b.branch1x1.conv.weight has shape \(5, 768, 1, 1\), expected \(192, 768, 1, 1\)"),
    ("key", "1 missing"),
    ("extra", "1 unexpected"),
])
def test_bad_weight_files_give_one_line_errors(tmp_path, damage, message):
    path = tmp_path / "weights.pth"
    state = FIDInceptionV3().state_dict()
    if damage == "garbage":
        path.write_bytes(b"not a torch file at all")
    elif damage == "object":
        torch.save({"model": nn.Linear(2, 2)}, path)
    elif damage == "shape":
        state["Mixed_6b.branch1x1.conv.weight"] = torch.zeros(5, 768, 1, 1)
    elif damage == "key":
        del state["fc.bias"]
    elif damage == "extra":
        state["AuxLogits.fc.weight"] = torch.zeros(1008, 768)
    if damage in ("shape", "key", "extra"):
        torch.save(state, path)
    with pytest.raises(MetricError, match=message) as info:
        load_inception(path, verify=False)
    assert "\n" not in str(info.value)


# -- FID end to end ---------------------------------------------------------------------------
@pytest.mark.slow
def test_fid_end_to_end_with_random_weights(weights_file):
    g = torch.Generator().manual_seed(4)
    reals = torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8)
    fakes = (reals.float() * 0.5 + 40).to(torch.uint8)  # darker, lower contrast

    def fake_source(start: int, count: int) -> torch.Tensor:
        return fakes[start:start + count]

    result = evaluate_metrics(["fid"], fake_source, TensorDataset(reals), 32, num_images=4,
                              inception_path=weights_file, verify_inception=False, batch_size=4, progress=False)

    # Independently: the same file in a fresh network, and the distance from the features through
    # the low-rank identity tr((A'A B'B)^(1/2)) = nuclear norm of A B' (A, B: centred / sqrt(n-1)).
    model = FIDInceptionV3()
    model.load_state_dict(torch.load(weights_file, weights_only=True))
    with torch.no_grad():
        features = model.eval()(torch.cat([reals, fakes])).double().numpy()
    real_features, fake_features = features[:4], features[4:]
    assert real_features.shape == (4, 2048) and real_features.std() > 1e-3
    a = (real_features - real_features.mean(0)) / np.sqrt(3)
    b = (fake_features - fake_features.mean(0)) / np.sqrt(3)
    mean_gap = real_features.mean(0) - fake_features.mean(0)
    expected = mean_gap @ mean_gap + np.sum(a * a) + np.sum(b * b) - 2 * np.linalg.norm(a @ b.T, "nuc")
    assert result == {"fid": pytest.approx(expected, rel=1e-4)}
    assert expected > 1.0
