"""OOD detection: the metrics on known cases, each score against its paper's definition on
fixed tensors and against pytorch-ood (the field's library, a test dependency only), and the
OOD evaluation's protocol (near/far roles, fitted statistics, one-line errors)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdrun.evaluation.base import Embedding
from kdrun.evaluation.ood import ood_detection
from kdrun.evaluation.scores import SCORES, build_score
from kdrun.models import build_model

from conftest import compose_config

pytorch_ood = pytest.importorskip("pytorch_ood.detector", reason="pip install pytorch-ood")

SETTINGS = {"odin": {"temperature": 1000, "eps": 0.0014}, "knn": {"k": 3}, "vim": {"dim": 4}}


def score(name: str, **settings):
    return build_score(name, {**SETTINGS.get(name, {}), **settings})


def test_ood_metrics_on_known_cases():
    high, low = torch.full((100,), 0.9), torch.full((50,), 0.2)
    assert ood_detection(high, low) == {"auroc": 100.0, "fpr95": 0.0, "aupr_in": 100.0,
                                        "aupr_out": 100.0}
    assert ood_detection(low, high)["auroc"] == 0.0
    same = torch.linspace(0, 1, 200)
    result = ood_detection(same, same)
    assert result["auroc"] == pytest.approx(50.0) and result["fpr95"] == pytest.approx(95, abs=1)
    # in 0.9, 0.6; out 0.7, 0.1: ranked 0.9 in, 0.7 out, 0.6 in, 0.1 out
    result = ood_detection(torch.tensor([0.9, 0.6]), torch.tensor([0.7, 0.1]))
    assert result["auroc"] == pytest.approx(75.0)  # 3 of the 4 in/out pairs ordered
    assert result["aupr_in"] == pytest.approx(100 * (1 + 2 / 3) / 2)  # precision at each hit
    # by -score: 0.1 out, 0.6 in, 0.7 out, 0.9 in: precision 1 and 2/3 at the two OOD hits
    assert result["aupr_out"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert result["fpr95"] == 50.0  # keeping both test images lets 0.7 through


def test_logit_scores_are_their_definitions():
    logits = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, -1.0]])
    batch = Embedding(logits, torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    e = math.e
    assert score("msp").score(batch).tolist() == pytest.approx([e**2 / (e**2 + 2),
                                                                e / (2 * e + 1 / e)])
    assert score("maxlogit").score(batch).tolist() == [2.0, 1.0]
    assert score("energy").score(batch).tolist() == pytest.approx([math.log(e**2 + 2),
                                                                   math.log(2 * e + 1 / e)])
    # pytorch-ood's outlier scores are ours negated
    for name, theirs in (("msp", pytorch_ood.MaxSoftmax(None)),
                         ("energy", pytorch_ood.EnergyBased(None)),
                         ("maxlogit", pytorch_ood.MaxLogit(None))):
        assert torch.allclose(score(name).score(batch), -theirs.predict_logits(logits)), name


def features(n: int, classes: int = 3, width: int = 8, seed: int = 0) -> Embedding:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, width, generator=g) * 3
    z = centres[labels] + torch.randn(n, width, generator=g)
    return Embedding(torch.randn(n, classes, generator=g), z, labels)


def test_mahalanobis_is_the_distance_to_the_closest_class_mean_under_the_shared_covariance():
    train, test = features(60), features(9, seed=1)
    model = build_model("resnet8", 3, [0.5] * 3, [0.25] * 3)
    mahalanobis = score("mahalanobis")
    mahalanobis.fit(train, model)
    z, y = train.features.double(), train.labels
    means = torch.stack([z[y == c].mean(0) for c in range(3)])
    sigma = sum((z[y == c] - means[c]).T @ (z[y == c] - means[c]) for c in range(3)) / len(z)
    precision = torch.linalg.inv(sigma)
    expected = torch.tensor([-min(float((q - m) @ precision @ (q - m)) for m in means)
                             for q in test.features.double()], dtype=torch.float64)
    assert torch.allclose(mahalanobis.score(test).double(), expected, rtol=1e-5)
    # pytorch-ood sums the outer products without dividing by N and halves the distance
    theirs = pytorch_ood.Mahalanobis(None).fit_features(train.features, train.labels)
    assert torch.allclose(mahalanobis.score(test).double(),
                          -2 * len(z) * theirs.predict_features(test.features).double(),
                          rtol=1e-3)
    # fitted on images of two of the three classes (a small fit_subset): the two means count
    two = Embedding(train.logits[y < 2], train.features[y < 2], y[y < 2])
    mahalanobis.fit(two, model)
    assert mahalanobis.means.shape[0] == 2 and torch.isfinite(mahalanobis.score(test)).all()


def test_knn_is_the_negative_distance_to_the_kth_nearest_normalised_training_feature():
    train, test = features(50), features(7, seed=2)
    knn = score("knn", k=3)
    knn.fit(train, None)
    bank, queries = F.normalize(train.features, dim=1), F.normalize(test.features, dim=1)
    expected = -torch.cdist(queries, bank).sort(dim=1).values[:, 2]
    assert torch.allclose(knn.score(test), expected, atol=1e-5)
    theirs = pytorch_ood.KNN(None, k=3).fit_features(train.features, train.labels)
    assert torch.allclose(knn.score(test).double(),
                          -theirs.predict_features(test.features).double(), atol=1e-5)


def test_knn_refuses_a_k_beyond_its_training_bank_in_one_line():
    from kdrun.errors import ConfigError

    with pytest.raises(ConfigError, match="knn.k=80 is more than the 50 training images"):
        score("knn", k=80).check(fitted_on=50)


def test_vim_matches_pytorch_ood_on_a_models_classifier():
    torch.manual_seed(0)
    model = build_model("resnet8", 3, [0.5] * 3, [0.25] * 3).eval()
    head = model.net.get_classifier()
    width = head.weight.shape[1]
    g = torch.Generator().manual_seed(3)
    z_train, z_test = torch.randn(200, width, generator=g), torch.randn(10, width, generator=g)
    logits = lambda z: z @ head.weight.detach().T + head.bias.detach()  # noqa: E731
    train = Embedding(logits(z_train), z_train, torch.arange(200) % 3)
    test = Embedding(logits(z_test), z_test, torch.zeros(10, dtype=torch.long))
    vim = score("vim", dim=4)
    vim.fit(train, model)
    theirs = pytorch_ood.ViM(None, d=4, w=head.weight, b=head.bias)
    theirs.fit_features(z_train, train.labels)
    assert torch.allclose(vim.score(test).double(), -theirs.predict_features(z_test).double(),
                          rtol=1e-4, atol=1e-4)
    # energy minus alpha times the residual norm outside the 4 largest principal directions
    origin = -torch.linalg.pinv(head.weight.detach().double()) @ head.bias.detach().double()
    centred = z_train.double() - origin
    _, vectors = torch.linalg.eigh(centred.T @ centred / 200)
    residual = lambda z: ((z.double() - origin) @ vectors[:, :-4]).norm(dim=1)  # noqa: E731
    alpha = logits(z_train).double().max(1).values.mean() / residual(z_train).mean()
    expected = logits(z_test).double().logsumexp(1) - alpha * residual(z_test)
    assert torch.allclose(vim.score(test).double(), expected, rtol=1e-6)


def test_odin_is_the_tempered_softmax_of_the_image_moved_against_its_own_predictions_loss():
    torch.manual_seed(0)
    model = build_model("resnet8", 4, [0.5] * 3, [0.25] * 3).eval()
    images = torch.rand(6, 3, 16, 16)
    odin = score("odin", temperature=10.0, eps=0.01)
    x = images.clone().requires_grad_(True)
    logits = model(x) / 10
    F.cross_entropy(logits, logits.argmax(1)).backward()
    moved = images - 0.01 * x.grad.sign()
    expected = (model(moved) / 10).softmax(1).max(1).values
    assert torch.allclose(odin.score_images(model, images), expected.detach(), atol=1e-6)
    theirs = pytorch_ood.ODIN(model, eps=0.01, temperature=10.0)
    assert torch.allclose(odin.score_images(model, images), -theirs.predict(images), atol=1e-6)


def test_every_score_has_a_label_and_builds_from_the_yaml_settings():
    from kdrun.evaluation import evaluation_defaults

    settings = evaluation_defaults("ood").settings
    for name in SCORES.names():
        built = build_score(name, settings.get(name))
        assert built.label and isinstance(built.label, str)
    assert np.isfinite(settings.knn.k)


def test_an_ood_set_with_the_training_classes_is_refused_before_training(tmp_path):
    from kdrun.errors import ConfigError
    from kdrun.jobs import train

    with pytest.raises(ConfigError, match=r"^eval.ood.far.synthetic: synthetic has the training "
                                          r"set's own classes, so it is a shift, not OOD: name "
                                          r"it under eval.shift.sets.synthetic$"):
        train(compose_config("method=vanilla", "+eval.ood.far.synthetic=null"), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def write_mnist(root, counts: dict[str, int]) -> None:
    """torchvision's MNIST/raw files: big-endian IDX headers, then the bytes."""
    import struct

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in counts.items():
        prefix = "train" if split == "train" else "t10k"
        pixels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + pixels.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + (np.arange(n) % 10).astype(np.uint8).tobytes())


def write_tree(root, layout: dict[str, int], size: int = 24) -> None:
    """Images at the given relative folders (Tiny ImageNet's <wnid>/images/, DTD's <class>/)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for folder, n in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                root / folder / f"{i}.jpg")


def test_openood_sets_are_read_from_their_official_forms_in_their_roles(tmp_path):
    """MNIST from torchvision's IDX files; Tiny ImageNet, Textures and Places365 as trees of
    images at any depth; near and far means over their roles, by every score."""
    from kdrun.data import load_named_dataset
    from kdrun.jobs import train

    write_mnist(tmp_path / "mnist", {"train": 6, "test": 12})
    write_tree(tmp_path / "tin", {"n01443537/images": 5, "n01629819/images": 4})
    write_tree(tmp_path / "textures", {"banded": 3, "zigzagged": 3})
    write_tree(tmp_path / "places365", {"": 7})  # images lying in the folder itself
    cfg = compose_config("method=vanilla", "+eval.ood.settings.knn.k=5",
                         f"+eval.ood.near.tin={tmp_path}/tin",
                         f"+eval.ood.far={{mnist:'{tmp_path}/mnist',textures:'{tmp_path}/"
                         f"textures',places365:'{tmp_path}/places365'}}",
                         "+eval.ood.scores=[msp,maxlogit,energy,odin,mahalanobis,knn,vim]")
    sizes = {name: len(load_named_dataset(name, str(tmp_path / name), cfg.dataset,
                                          f"eval.ood.x.{name}", cfg.cache_dir).test)
             for name in ("mnist", "tin", "textures", "places365")}
    assert sizes == {"mnist": 12, "tin": 9, "textures": 6, "places365": 7}
    results = train(cfg, tmp_path / "run")
    for score in ("msp", "maxlogit", "energy", "odin", "mahalanobis", "knn", "vim"):
        for metric in ("auroc", "fpr95", "aupr_in", "aupr_out"):
            assert results[f"ood/near/{score}/{metric}"] == results[f"ood/tin/{score}/{metric}"]
            far = [results[f"ood/{n}/{score}/{metric}"] for n in ("mnist", "textures",
                                                                    "places365")]
            assert results[f"ood/far/{score}/{metric}"] == pytest.approx(np.mean(far))
            assert 0 <= results[f"ood/far/{score}/{metric}"] <= 100


def test_a_missing_openood_set_names_its_role_and_where_it_looked(tmp_path):
    from kdrun.errors import DataNotFoundError
    from kdrun.jobs import train

    with pytest.raises(DataNotFoundError, match=f"^eval.ood.far.textures: Textures not found in "
                                                f"{tmp_path}/dtd"):
        train(compose_config("method=vanilla", f"+eval.ood.far.textures={tmp_path}/dtd"),
              tmp_path / "run")
    with pytest.raises(DataNotFoundError, match=f"^eval.ood.far.mnist: MNIST not found in "
                                                f"{tmp_path}/m .looked for MNIST/raw"):
        train(compose_config("method=vanilla", f"+eval.ood.far.mnist={tmp_path}/m"),
              tmp_path / "run")


def test_the_teacher_goes_through_the_same_evaluations_with_the_difference(tmp_path):
    from kdrun.jobs import train

    results = train(compose_config("method=kd", "eval=standard", "eval.teacher=true",
                                   "eval.subset=16", "eval.attacks.pgd_linf.steps=2",
                                   "eval.attacks.pgd_l2.steps=2", "eval.corruptions=null",
                                   "+eval.ood.far.digits=null"), tmp_path)
    for key in ("pgd/linf/eps8/acc", "fgsm/eps2/acc", "ood/digits/energy/auroc",
                "ood/far/msp/aupr_in"):
        assert 0 <= results[f"teacher/{key}"] <= 100, key
        assert results[f"vs_teacher/{key}"] == pytest.approx(results[key]
                                                             - results[f"teacher/{key}"])
    # without eval.teacher (the default) no teacher keys
    plain = train(compose_config("method=kd", "+eval.ood.far.digits=null"), tmp_path / "plain")
    assert not any(k.startswith(("teacher/ood", "vs_teacher/")) for k in plain)


def test_vim_refuses_a_model_without_a_linear_classifier_before_training():
    from kdrun.errors import ConfigError

    model = build_model("resnet8", 3, [0.5] * 3, [0.25] * 3)
    score("vim", dim=4).check_model(model)  # resnet8's 64-wide linear head: fine
    with pytest.raises(ConfigError, match="vim.dim=64 leaves no residual of the 64-wide"):
        score("vim", dim=64).check_model(model)
    model.net.fc = torch.nn.Linear(64, 3, bias=False)
    with pytest.raises(ConfigError, match="resnet8's is a Linear without a bias: leave vim out"):
        score("vim", dim=4).check_model(model)


def test_a_teacher_to_evaluate_needs_a_method_with_one():
    from kdrun.errors import ConfigError
    from kdrun.validate import validate

    with pytest.raises(ConfigError, match="^eval.teacher=True is not allowed: only a training "
                                          "run of a method with a teacher"):
        validate(compose_config("method=vanilla", "eval.teacher=true"))
    validate(compose_config("method=kd", "eval.teacher=true"))


def test_a_failing_evaluation_does_not_cost_the_trained_student(tmp_path, monkeypatch):
    from kdrun.evaluation.shift import Shift
    from kdrun.jobs import train

    def broken(self, subject):
        raise RuntimeError("an evaluation failed")

    monkeypatch.setattr(Shift, "measure", broken)
    with pytest.raises(RuntimeError, match="an evaluation failed"):
        train(compose_config("method=vanilla", "+eval.shift.sets.synthetic=null"), tmp_path)
    assert (tmp_path / "checkpoints" / "student.pt").is_file()


def test_an_image_list_reads_a_benchmarks_exact_selection(tmp_path):
    """OpenOOD's benchmark_imglist form: 'path label' lines, paths relative to the root,
    given with the set's root as the role's value."""
    from kdrun.jobs import train

    write_tree(tmp_path / "images_classic" / "tin", {"n01443537/images": 5, "n01629819": 4})
    listed = tmp_path / "test_tin.txt"
    listed.write_text("tin/n01443537/images/0.jpg -1\ntin/n01629819/3.jpg -1\n\n")
    near = f"+eval.ood.near.tin={{root:'{tmp_path}/images_classic',image_list:'{listed}'}}"
    results = train(compose_config("method=vanilla", near), tmp_path / "run")
    assert 0 <= results["ood/tin/msp/auroc"] <= 100
    listed.write_text("tin/n01443537/images/9.jpg -1\n")
    from kdrun.errors import DataNotFoundError

    with pytest.raises(DataNotFoundError, match="tin/n01443537/images/9.jpg named by"):
        train(compose_config("method=vanilla", near), tmp_path / "again")
