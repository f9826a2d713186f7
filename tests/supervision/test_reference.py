"""The two-input AU detector (dcnn_flame.supervision.reference): it starts as its base detector,
its loss and response against naive computations, it learns what one image cannot show, files,
the pairs command line and the check."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from dcnn_flame.constants import NUM_AUS
from dcnn_flame.losses.au import au_bce_loss
from dcnn_flame.supervision.au import AUDetector, AUDetectorConfig
from dcnn_flame.supervision.pairs import PairSet, contrast_metrics, fine_tune
from dcnn_flame.supervision.reference import (ReferenceAUDetector, load_au_detector, reference_loss,
                                              reference_response, reference_to_bytes, train_reference)

SIZE = 32


def _base(seed: int = 0) -> AUDetector:
    torch.manual_seed(seed)
    return AUDetector(AUDetectorConfig(input_size=SIZE))


def test_before_training_it_answers_what_its_base_answers():
    base = _base(1).eval()
    net = ReferenceAUDetector(base).eval()
    x, r = torch.rand(5, 3, SIZE, SIZE), torch.rand(5, 3, SIZE, SIZE)
    with torch.no_grad():
        want = base(x)
        for ref in (r, x, torch.zeros_like(x)):
            got = net(x, ref)
            torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-5)
            torch.testing.assert_close(got.features, want.features, rtol=0, atol=1e-5)
    # the base's layers are shared, not copied: training the two-input net trains them
    assert net.base is base and net.cfg is base.cfg
    assert {n for n, _ in net.named_parameters()} == {f"base.{n}" for n, _ in base.named_parameters()} | {
        "mix.weight", "mix.bias"}
    with pytest.raises(ValueError, match="one shape"):
        net(x, r[:2])


def test_loss_and_response_match_naive_computations():
    net = ReferenceAUDetector(_base(2)).eval()
    with torch.no_grad():  # a mix that is not the identity, so the reference matters
        net.mix.weight.add_(0.05 * torch.randn_like(net.mix.weight))
    g = torch.Generator().manual_seed(0)
    n, e = torch.rand(4, 3, SIZE, SIZE, generator=g), torch.rand(4, 3, SIZE, SIZE, generator=g)
    y = torch.rand(4, NUM_AUS, generator=g) * (torch.rand(4, NUM_AUS, generator=g) < 0.3)
    pw = torch.linspace(1.0, 5.0, NUM_AUS)
    with torch.no_grad():
        loss, parts = reference_loss(net, n, e, y, pw)
        le = au_bce_loss(net(e, n).logits, y, pos_weight=pw)
        ln = au_bce_loss(net(n, n).logits, torch.zeros_like(y), pos_weight=pw)
        torch.testing.assert_close(loss, le + ln, rtol=1e-5, atol=1e-6)
        assert parts["expressed"] == pytest.approx(float(le), rel=1e-5)
        resp = reference_response(net, e, n[0])
        naive = torch.stack([net(e[k:k + 1], n[:1]).probs[0] - net(n[:1], n[:1]).probs[0] for k in range(4)])
        torch.testing.assert_close(resp, naive, rtol=0, atol=1e-5)
        # one neutral per image: the same as the per-image loop
        resp_k = reference_response(net, e, n)
        naive_k = torch.stack([net(e[k:k + 1], n[k:k + 1]).probs[0] - net(n[k:k + 1], n[k:k + 1]).probs[0]
                               for k in range(4)])
        torch.testing.assert_close(resp_k, naive_k, rtol=0, atol=1e-5)
        # the shared trunk pass equals two forward calls (eval mode: BN running statistics)
        out_e, out_n = net.forward_pair(e, n)
        torch.testing.assert_close(out_e.logits, net(e, n).logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(out_n.logits, net(n, n).logits, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="au \\[B, 17\\]"):
        reference_loss(net, n, e, y[:, :5])


def _confounded_pairs(n: int, seed: int) -> PairSet:
    """Faces whose own shade of a square varies as much as an "AU" (au01) brightens it: from one
    image the AU is confounded with the face; against the face's own neutral it is not."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(60, 140, n)[:, None, None, None] + rng.integers(0, 16, (n, SIZE, SIZE, 3))
    base[:, 8:24, 8:24] += rng.uniform(-50, 50, n)[:, None, None, None]
    y = np.zeros((n, NUM_AUS), np.float32)
    y[:, 0] = rng.uniform(0, 1, n) * (rng.uniform(size=n) < 0.7)
    expressed = base.copy()
    expressed[:, 8:24, 8:24] += 50.0 * y[:, 0, None, None, None]
    return PairSet(base.clip(0, 255).astype(np.uint8), expressed.clip(0, 255).astype(np.uint8), y, np.arange(n))


def _answer_error(net, pairs: PairSet) -> float:
    """Mean |answer - y| for au01 on the expressed images (eval mode)."""
    net.eval()
    n = torch.from_numpy(pairs.neutral).permute(0, 3, 1, 2).float() / 255
    e = torch.from_numpy(pairs.expressed).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        p = net(e, n).probs if isinstance(net, ReferenceAUDetector) else net(e).probs
    return float((p[:, 0] - torch.from_numpy(pairs.au[:, 0])).abs().mean())


@pytest.mark.slow
def test_it_learns_an_au_that_one_image_confounds_with_the_face():
    """Same data, epochs and BCE: the single-image detector cannot tell the AU from the face's
    own shade, the two-input detector can."""
    train, val = _confounded_pairs(160, 0), _confounded_pairs(64, 1)
    for m in (single := _base(3)).modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    net = ReferenceAUDetector(_base(3))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    quiet = dict(log=lambda s: None)
    fine_tune(single, train, val, epochs=8, lr=2e-3, batch_size=16, contrast_weight=0.0, seed=0, **quiet)
    best, history = train_reference(net, train, val, epochs=8, lr=2e-3, batch_size=16, seed=0, **quiet)
    assert len(history) == 8 and 1 <= best <= 8
    assert contrast_metrics(net, val)["contrast_mae"] == pytest.approx(
        min(h["val"]["contrast_mae"] for h in history), abs=1e-6)  # the best epoch's weights are kept
    err_single, err_ref = _answer_error(single, val), _answer_error(net, val)
    assert err_ref < 0.6 * err_single, (err_ref, err_single)


def test_at_input_size_keeps_every_weight():
    from dcnn_flame.supervision.reference import at_input_size

    for net in (_base(4), ReferenceAUDetector(_base(5))):
        net.eval()
        assert at_input_size(net, SIZE) is net
        big = at_input_size(net, 2 * SIZE).eval()
        assert type(big) is type(net) and big.cfg.input_size == 2 * SIZE and net.cfg.input_size == SIZE
        for k, v in net.state_dict().items():
            torch.testing.assert_close(big.state_dict()[k], v, rtol=0, atol=0)
        x = torch.rand(2, 3, 2 * SIZE, 2 * SIZE)
        with torch.no_grad():
            out = big(x) if isinstance(big, AUDetector) else big(x, x.flip(-1))
        assert out.logits.shape == (2, NUM_AUS) and bool(torch.isfinite(out.logits).all())
    with pytest.raises(ValueError, match=">= 16"):
        at_input_size(_base(4), 8)


def test_files_and_the_check_read_both_kinds(tmp_path):
    from dcnn_flame.generation.au_check import detector_response
    from dcnn_flame.supervision.bundle import teachers_to_bytes
    from dcnn_flame.supervision.expression import ExpressionClassifier, ExpressionClassifierConfig

    net = ReferenceAUDetector(_base(4)).eval()
    with torch.no_grad():
        net.mix.weight.add_(0.05 * torch.randn_like(net.mix.weight))
    path = tmp_path / "ref.pt"
    path.write_bytes(reference_to_bytes(net, meta={"note": "x"}))
    back, meta = load_au_detector(str(path))
    assert isinstance(back, ReferenceAUDetector) and meta == {"note": "x"}
    images = torch.rand(4, 3, SIZE, SIZE)
    back.eval()
    with torch.no_grad():
        torch.testing.assert_close(back(images, images[:1].expand_as(images)).logits,
                                   net(images, images[:1].expand_as(images)).logits)
        # the check's response for a two-input detector: D(e | n) - D(n | n), row 0 the neutral
        want = reference_response(net, images[1:], images[0]).double().numpy()
        m = images.flip(-1)
        flipped = 0.5 * (want + reference_response(net, m[1:], m[0]).double().numpy())
    np.testing.assert_allclose(detector_response(back, images), want, atol=1e-6)
    np.testing.assert_allclose(detector_response(back, images, flip=True), flipped, atol=1e-6)
    # float16 storage: half the bytes, weights equal to their float16 rounding, loaded as float32
    half = tmp_path / "half.pt"
    half.write_bytes(reference_to_bytes(net, half=True))
    assert half.stat().st_size < 0.6 * path.stat().st_size
    back16, _ = load_au_detector(str(half))
    for k, v in net.state_dict().items():
        got = back16.state_dict()[k]
        assert got.dtype == v.dtype
        want16 = v.half().to(v.dtype) if v.is_floating_point() else v
        torch.testing.assert_close(got, want16, rtol=0, atol=0)
    teachers = tmp_path / "t.pt"
    teachers.write_bytes(teachers_to_bytes(_base(5), ExpressionClassifier(ExpressionClassifierConfig(input_size=SIZE))))
    single, _ = load_au_detector(str(teachers))
    assert type(single) is AUDetector
    bad = tmp_path / "bad.pt"
    buf = io.BytesIO()
    torch.save({"format": "something/1"}, buf)
    bad.write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="neither a teachers file nor a two-input AU detector file"):
        load_au_detector(str(bad))


@pytest.mark.slow
def test_pairs_command_trains_one_and_au_check_reads_it(tmp_path, capsys):
    from dcnn_flame.generation import au_check
    from dcnn_flame.supervision import pairs
    from dcnn_flame.supervision.bundle import teachers_to_bytes
    from dcnn_flame.supervision.expression import ExpressionClassifier, ExpressionClassifierConfig

    init = tmp_path / "init.pt"
    init.write_bytes(teachers_to_bytes(_base(6), ExpressionClassifier(ExpressionClassifierConfig(input_size=SIZE))))
    out = tmp_path / "ref.pt"
    assert pairs.main(["--init", str(init), "--output", str(out), "--identities", "3", "--epochs", "1",
                       "--processes", "1", "--val-fraction", "0.34", "--reference"]) == 0
    assert "[reference] epoch 1/1" in capsys.readouterr().out
    net, meta = load_au_detector(str(out))
    assert isinstance(net, ReferenceAUDetector) and meta["pairs"]["val_pairs"] == 4
    assert au_check.main(["--teachers", str(out), "--identities", "1", "--flip"]) == 0
    assert "[au_check] exact top sets" in capsys.readouterr().out


def test_pairs_command_trains_one_from_scratch(tmp_path, capsys):
    from dcnn_flame.supervision import pairs

    out = tmp_path / "scratch.pt"
    args = ["--init", "none", "--input-size", str(SIZE), "--output", str(out), "--identities", "2", "--epochs", "2",
            "--processes", "1", "--val-fraction", "0.5", "--reference", "--device", "cpu", "--seed", "3"]
    assert pairs.main(args) == 0
    text = capsys.readouterr().out
    assert "[reference] epoch 2/2" in text
    net, meta = load_au_detector(str(out))
    assert isinstance(net, ReferenceAUDetector) and net.cfg.input_size == SIZE
    assert meta["pairs"]["init"] == "none" and meta["pairs"]["val_pairs"] == 4
    assert meta["pairs"]["epochs_done"] == 2 and meta["pairs"]["best_epoch"] in (1, 2)
    first = {k: v.clone() for k, v in net.state_dict().items()}
    # the same seed draws the same initial weights and trains the same way
    again = tmp_path / "again.pt"
    assert pairs.main(args[:5] + [str(again)] + args[6:]) == 0
    net2, _ = load_au_detector(str(again))
    for k, v in net2.state_dict().items():
        torch.testing.assert_close(v, first[k])
    # progressive resizing: go on training that file at another input size
    bigger = tmp_path / "bigger.pt"
    assert pairs.main(["--init", str(out), "--input-size", "40", "--output", str(bigger), "--identities", "2",
                       "--epochs", "1", "--processes", "1", "--val-fraction", "0.5", "--reference",
                       "--device", "cpu"]) == 0
    assert "trained at 32 px; continuing at 40 px" in capsys.readouterr().out
    net3, meta3 = load_au_detector(str(bigger))
    assert isinstance(net3, ReferenceAUDetector) and net3.cfg.input_size == 40
    assert [r["init"] for r in meta3["earlier_pairs_runs"]] == ["none"] and meta3["pairs"]["init"] == str(out)
    with pytest.raises(SystemExit):  # from scratch only as a two-input detector
        pairs.main(["--init", "none", "--output", str(tmp_path / "x.pt"), "--identities", "2"])
    assert "add --reference" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pairs.main(["--init", "none", "--output", str(tmp_path / "x.pt"), "--reference", "--probe"])
    assert "drop --reference" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            pairs.main(["--init", "none", "--output", str(tmp_path / "x.pt"), "--reference", "--device", "cuda"])
        assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
