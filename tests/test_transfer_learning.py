"""Transfer learning (analogtrain.engine.transfer + run.train hooks): stage=pretrain saves a timm-compatible
state dict; init.checkpoint loads it (or a timm-format file) before the analog conversion; the tiles hold
the checkpoint weights clipped to the device bounds, perturbed by exactly the configured programming
noise; shape-mismatched heads are re-initialised and reported; bad sources are ConfigErrors naming
init.checkpoint."""

from __future__ import annotations

import gzip
import json
import struct
import uuid

import numpy as np
import pytest
import torch

from analogtrain.config.errors import ConfigError
from analogtrain.engine.transfer import (
    export_state_dict,
    load_pretrained,
    program_tiles,
    resolve_checkpoint,
    save_pretrained,
)
from analogtrain.models import build_model
from analogtrain.nn.convert import analog_layers
from analogtrain.utils.seeding import derive_seeds

# tiny Swin for 32x32 inputs: patch 4 -> 8x8 tokens, window 4, one block of width 16
TINY = ["model.embed_dim=16", "model.depths=[1]", "model.num_heads=[2]", "model.patch_size=4"]
IDX = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
       "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


def fake_fashion_mnist(root, n_train=200, n_test=60):
    """Random 28x28 IDX files in the torchvision layout ``<root>/FashionMNIST/raw/``."""
    rng = np.random.default_rng(0)
    folder = root / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    arrays = {"train_x": rng.integers(0, 256, (n_train, 28, 28)), "train_y": np.arange(n_train) % 10,
              "test_x": rng.integers(0, 256, (n_test, 28, 28)), "test_y": np.arange(n_test) % 10}
    for key, stem in IDX.items():
        arr = arrays[key]
        head = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
        with gzip.open(folder / (stem + ".gz"), "wb") as f:
            f.write(head + arr.astype(np.uint8).tobytes())


@pytest.fixture
def fashion(tmp_path, monkeypatch):
    import analogtrain.data.images as images

    monkeypatch.setattr(images, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")  # never the real 70k images
    fake_fashion_mnist(tmp_path / "data")
    return tmp_path / "data"


def tiny_model(compose, overrides=(), shape=(1, 32, 32), n_out=5, seed=0):
    cfg = compose(["model=swin", *TINY, *overrides])
    torch.manual_seed(derive_seeds(seed)["init"])
    return cfg, build_model(cfg.model, shape, n_out)


def programmed_blocks(layer):
    """(tile weights (o, i), the programmed DeviceArray, out slice, in slice) of an analog layer: the
    single array of analog SGD, C of the Tiki-Taka family."""
    for mat in layer.matrices:
        for tile, osl, isl in mat._blocks():
            rule = tile.rule
            arr = rule.C if hasattr(rule, "C") else rule.array
            yield tile.get_weights(), arr, osl, isl


# -------------------------------------------------------------------------------- run.train round trip
def test_pretrain_then_finetune_round_trip_through_run_train(compose, fashion, tmp_path, mlflow_uri):
    """experiment=swin_transfer_pretrain -> pretrained/model.pt (timm-loadable, MLflow artifact) ->
    experiment=swin_transfer_finetune with init.checkpoint=latest: with programming noise off, every
    analog tile holds the checkpoint weight clipped to its device's bounds; the excluded head is the
    fresh seeded init."""
    import timm

    from analogtrain.models.swin import swin_kwargs
    from analogtrain.run import train
    from analogtrain.tracking.mlflow_tracker import get_client

    exp = f"tl-{uuid.uuid4().hex[:8]}"
    common = [*TINY, f"data.root={fashion}", "data.limit_train=64", "data.limit_test=16", "data.batch_size=32",
              "trainer.epochs=1", "trainer.progress=off", f"logger.tracking_uri={mlflow_uri}",
              f"logger.experiment={exp}"]
    pre_cfg = compose(["experiment=swin_transfer_pretrain", *common])
    assert pre_cfg.stage == "pretrain" and pre_cfg.algo.name == "digital" and pre_cfg.data.pad_to == 32
    pre = train(pre_cfg, run_dir=tmp_path / "pre")
    weights = tmp_path / "pre" / "pretrained" / "model.pt"
    sd = torch.load(weights, weights_only=True)
    # a plain timm state dict: a timm model of the same sizes loads it strictly
    ref = timm.create_model(pre_cfg.model.variant, **swin_kwargs(pre_cfg.model, (1, 32, 32), 5))
    ref.load_state_dict(sd, strict=True)
    final = torch.load(tmp_path / "pre" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(sd[k], final[k]) for k in sd)  # the trained weights, not the init
    client = get_client(mlflow_uri)
    assert "pretrained/model.pt" in [a.path for a in client.list_artifacts(pre["mlflow_run_id"], "pretrained")]
    assert json.loads((tmp_path / "pre" / "pretrained" / "model.json").read_text())["num_outputs"] == 5

    # fine-tune; C untouched (trainer.lr=1e-9: c-TTv2 scales its buffer increments by the lr, so no
    # buffer gets near the threshold of a C write) so the end state shows the programmed weights; narrow
    # device bounds so that clipping matters
    ft_over = ["experiment=swin_transfer_finetune", *common, "init.programming_noise=0", "device.w_max=0.02",
               "device.w_min=-0.02", "trainer.lr=1e-9"]
    ft_cfg = compose(ft_over)
    assert ft_cfg.stage == "finetune" and ft_cfg.algo.name == "cttv2" and list(ft_cfg.data.classes) == [5, 6, 7, 8, 9]
    ft = train(ft_cfg, run_dir=tmp_path / "ft")
    report = json.loads((tmp_path / "ft" / "artifacts" / "init_report.json").read_text())
    assert report["path"] == str(weights.resolve()) and report["source"] == "latest"
    assert sorted(report["excluded"]) == ["head.fc.bias", "head.fc.weight"] and report["reinitialized"] == []
    assert report["programming"]["mode"] == "fixed" and report["programming"]["rms_dev"] == 0.0
    tags = client.get_run(ft["mlflow_run_id"]).data.tags
    assert tags["init.path"] == str(weights.resolve()) and tags["init.excluded"].startswith("head.fc")

    # rebuild the fine-tuned analog model from its checkpoint
    from analogtrain.algorithms.base import build_algorithm

    seeds = derive_seeds(ft_cfg.seed)
    torch.manual_seed(seeds["init"])
    fresh = build_model(ft_cfg.model, (1, 32, 32), 5)
    fresh_head = fresh.head.fc.weight.detach().clone()
    model = build_algorithm(ft_cfg, seeds).prepare(fresh)
    model.load_state_dict(torch.load(tmp_path / "ft" / "checkpoints" / "last.pt", weights_only=False)["model"])
    layers = dict(analog_layers(model))
    assert len(layers) == 5 and "patch_embed.proj" not in layers  # keep_digital: [patch_embed]
    n_clipped = n_total = 0
    for name, layer in layers.items():
        target = fresh_head if name == "head.fc" else sd[f"{name}.weight"]
        for W, arr, osl, isl in programmed_blocks(layer):
            lo, hi = arr.bounds
            t = target[osl, isl]
            assert torch.equal(W, torch.minimum(torch.maximum(t, lo), hi)), name
            n_clipped += int(((t < lo) | (t > hi)).sum())
            n_total += t.numel()
    assert 0.05 < n_clipped / n_total < 0.95  # the bounds really cut (so the test sees the clipping)


def test_head_reinitialised_on_class_count_mismatch(compose, tmp_path):
    _, pre = tiny_model(compose, n_out=5, seed=1)
    save_pretrained(pre, tmp_path / "run")
    _, model = tiny_model(compose, n_out=3, seed=0)
    _, fresh = tiny_model(compose, n_out=3, seed=0)
    report = load_pretrained(model, resolve_checkpoint(str(tmp_path / "run")))
    assert sorted(r.split(":")[0] for r in report.reinitialized) == ["head.fc.bias", "head.fc.weight"]
    assert "checkpoint (5, 16) != model (3, 16)" in " ".join(report.reinitialized)
    assert report.missing == [] and report.unexpected == []
    sd_pre, sd_new, sd_fresh = pre.state_dict(), model.state_dict(), fresh.state_dict()
    for k in sd_new:
        expect = sd_fresh[k] if k.startswith("head.fc") else sd_pre[k]
        assert torch.equal(sd_new[k], expect), k
    assert 0.9 < report.n_loaded / report.n_model < 1.0


# ------------------------------------------------------------------------------------- programming
def convert(compose, model, overrides):
    from analogtrain.algorithms.base import build_algorithm

    cfg = compose(["model=swin", *TINY, *overrides])
    return build_algorithm(cfg, derive_seeds(0)).prepare(model)


def test_programming_noise_has_the_configured_std(compose, tmp_path):
    _, pre = tiny_model(compose, seed=1)
    save_pretrained(pre, tmp_path)
    sd = torch.load(tmp_path / "pretrained" / "model.pt", weights_only=True)
    diffs = []
    for noise, seed in ((0.02, 5), (0.02, 5), (0.0, 5)):
        _, model = tiny_model(compose)
        load_pretrained(model, tmp_path / "pretrained" / "model.pt")
        model = convert(compose, model, ["algo=sgd"])
        info = program_tiles(model, noise, seed)
        d = torch.cat([(layer.weight - sd[f"{n}.weight"]).flatten() for n, layer in analog_layers(model)])
        diffs.append(d)
        assert info["mode"] == "fixed" and info["n_arrays"] == 5
    d = diffs[0]  # softbounds bounds ~±0.6, weights ~0.02: nothing clipped, d is the noise itself
    assert d.numel() > 3000
    assert d.std().item() == pytest.approx(0.02, rel=0.06)
    assert abs(d.mean().item()) < 4 * 0.02 / d.numel() ** 0.5
    assert torch.equal(diffs[0], diffs[1])  # seeded (Philox), reproducible
    assert torch.equal(diffs[2], torch.zeros_like(diffs[2]))  # noise off: exact


def test_device_write_noise_on_set_is_the_default_programming_noise(compose, tmp_path):
    _, pre = tiny_model(compose, seed=1)
    save_pretrained(pre, tmp_path)
    sd = torch.load(tmp_path / "pretrained" / "model.pt", weights_only=True)

    def programmed(extra):
        _, model = tiny_model(compose)
        load_pretrained(model, tmp_path / "pretrained" / "model.pt")
        model = convert(compose, model, ["algo=sgd", *extra])
        info = program_tiles(model, None, 3)
        return model, info

    # write_noise_std 20 x dw_min 0.001 = 0.02 in weight units, around the exact persistent weight w_p
    model, info = programmed(["device.write_noise_std=20"])
    assert info["mode"] == "device" and info["n_noisy"] == 5
    dev, dp = [], []
    for n, layer in analog_layers(model):
        arr = layer.matrices[0].tiles[0].rule.array
        assert arr.has_write_noise
        dev.append((arr.w - arr.w_p).flatten())
        dp.append((arr.w_p - sd[f"{n}.weight"]).flatten())
    assert torch.cat(dev).std().item() == pytest.approx(0.02, rel=0.06)
    assert torch.cat(dp).abs().max().item() == 0.0
    # apply_write_noise_on_set false, or a device without write noise: exact programming
    for extra in (["device.write_noise_std=20", "device.apply_write_noise_on_set=false"], []):
        model, info = programmed(extra)
        assert info["n_noisy"] == 0
        for n, layer in analog_layers(model):
            assert torch.equal(layer.weight, sd[f"{n}.weight"])


def test_export_state_dict_of_an_analog_model_has_the_digital_keys(compose):
    _, digital = tiny_model(compose)
    keys = set(digital.state_dict())
    model = convert(compose, digital, ["algo=cttv2"])
    sd = export_state_dict(model)
    assert set(sd) == keys
    for n, layer in analog_layers(model):
        assert torch.equal(sd[f"{n}.weight"], layer.weight)


# ------------------------------------------------------------------------------------ timm checkpoints
def original_layout(sd: dict) -> dict:
    """timm Swin keys -> the original Microsoft layout (patch merging at the end of the previous stage,
    classifier ``head.*``, persistent relative_position_index buffers)."""
    import re

    out = {}
    for k, v in sd.items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        out[k.replace("head.fc.", "head.")] = v
        if k.endswith("relative_position_bias_table"):
            out[k.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(16, 16).long()
    return out


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_timm_format_checkpoint_is_mapped(compose, tmp_path, fmt):
    """An original-layout, 3-channel, 10-class checkpoint into a 1-channel, 7-class model."""
    two = ["model.depths=[1,1]", "model.num_heads=[2,4]", "model.patch_size=2"]
    _, src = tiny_model(compose, two, shape=(3, 16, 16), n_out=10, seed=1)
    sd = src.state_dict()
    orig = original_layout(sd)
    assert "layers.0.downsample.reduction.weight" in orig and "head.weight" in orig
    path = tmp_path / f"swin.{fmt}"
    if fmt == "pth":
        torch.save({"model": orig, "epoch": 300}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in orig.items()}, str(path))
    _, model = tiny_model(compose, two, shape=(1, 16, 16), n_out=7)
    report = load_pretrained(model, path)
    assert sorted(r.split(":")[0] for r in report.reinitialized) == ["head.fc.bias", "head.fc.weight"]
    assert report.unexpected == [] and report.missing == []
    assert any("downsample" in a for a in report.adapted) and any("input channels" in a for a in report.adapted)
    new = model.state_dict()
    assert torch.equal(new["layers.1.downsample.reduction.weight"], sd["layers.1.downsample.reduction.weight"])
    assert torch.equal(new["layers.0.blocks.0.attn.qkv.weight"], sd["layers.0.blocks.0.attn.qkv.weight"])
    # RGB patch embedding -> 1 channel: the channel sum (the image is grey: r = g = b)
    assert torch.allclose(new["patch_embed.proj.weight"], sd["patch_embed.proj.weight"].sum(1, keepdim=True))


def test_relative_position_table_resized_for_another_window(compose, tmp_path):
    _, src = tiny_model(compose, ["model.window_size=4"], seed=1)
    torch.save(src.state_dict(), tmp_path / "w4.pth")
    _, model = tiny_model(compose, ["model.window_size=2"])
    report = load_pretrained(model, tmp_path / "w4.pth")
    key = "layers.0.blocks.0.attn.relative_position_bias_table"
    assert model.state_dict()[key].shape == (9, 2) and key in report.loaded
    assert any(a.startswith(key) for a in report.adapted) and report.reinitialized == []


# --------------------------------------------------------------------------------------------- errors
def test_bad_sources_are_config_errors_naming_init_checkpoint(compose, tmp_path, mlflow_uri):
    from analogtrain.tracking.mlflow_tracker import get_client

    def err(src, **kw):
        with pytest.raises(ConfigError) as ei:
            resolve_checkpoint(src, tracking_uri=mlflow_uri, **kw)
        assert ei.value.key == "init.checkpoint"
        return str(ei.value)

    assert "neither an existing file" in err(str(tmp_path / "nope.pt"))
    assert "was not found" in err("0123456789abcdef0123456789abcdef")
    (tmp_path / "empty_run").mkdir()
    assert "directory without pretrained/model.pt" in err(str(tmp_path / "empty_run"))
    assert "no finished stage=pretrain run" in err("latest", experiment="Default")
    client = get_client(mlflow_uri)
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    assert "has no artifact 'pretrained/model.pt'" in err(run.info.run_id, download_dir=tmp_path / "dl")

    _, model = tiny_model(compose)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="not a weights file") as ei:
        load_pretrained(model, junk)
    assert ei.value.key == "init.checkpoint"
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 4))
    torch.save(mlp.state_dict(), tmp_path / "mlp.pt")
    with pytest.raises(ConfigError, match="shares no tensor with the model"):
        load_pretrained(model, tmp_path / "mlp.pt")
    _, other = tiny_model(compose, n_out=3)
    torch.save(other.state_dict(), tmp_path / "three.pt")
    with pytest.raises(ConfigError, match="does not match the model exactly") as ei:
        load_pretrained(model, tmp_path / "three.pt", strict=True)
    assert ei.value.key == "init.strict"
    # init.exclude: a module prefix excludes its keys (as model.keep_digital matches modules); a glob that
    # matches no key is a typo, not a silent no-op
    rep = load_pretrained(model, tmp_path / "three.pt", exclude=["head"])
    assert rep.excluded and all(k.startswith("head.") for k in rep.excluded) and not rep.reinitialized
    with pytest.raises(ConfigError, match="'heads' matches no key") as ei:
        load_pretrained(model, tmp_path / "three.pt", exclude=["heads"])
    assert ei.value.key == "init.exclude"


@pytest.mark.parametrize(("over", "key", "msg"), [
    (["stage=finetune"], "init.checkpoint", "stage=finetune needs"),
    (["stage=pretrain", "algo=sgd"], "stage", "use algo=digital"),
    (["stage=warmup"], "stage", "choose one of train, pretrain, finetune"),
    (["init.programming_noise=-0.1"], "init.programming_noise", "out of range"),
])
def test_stage_and_init_validation(compose, over, key, msg):
    from analogtrain.config.validate import validate_config

    with pytest.raises(ConfigError, match=msg) as ei:
        validate_config(compose(over))
    assert ei.value.key == key


def test_missing_checkpoint_fails_run_train_before_any_work(compose, tmp_path):
    from analogtrain.run import train

    cfg = compose(["model=swin", *TINY, "data=digits", "data.pad_to=16", "logger=none",
                   f"init.checkpoint={tmp_path / 'missing.pt'}"])
    with pytest.raises(ConfigError, match="init.checkpoint") as ei:
        train(cfg, run_dir=tmp_path / "run")
    assert ei.value.key == "init.checkpoint"
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_model_pretrained_path_loads_at_build_time(compose, tmp_path):
    _, pre = tiny_model(compose, n_out=5, seed=1)
    torch.save({"state_dict": pre.state_dict()}, tmp_path / "w.pth")
    _, model = tiny_model(compose, [f"model.pretrained_path={tmp_path / 'w.pth'}"], n_out=5)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), pre.state_dict().values()))
    with pytest.raises(ConfigError) as ei:
        tiny_model(compose, [f"model.pretrained_path={tmp_path / 'nope.pth'}"])
    assert ei.value.key == "model.pretrained_path" and "no such file" in str(ei.value)
