"""ResNet-18 encoders (audio, frames, image) and the transformers text encoder, on tiny inputs."""

from __future__ import annotations

import re

import pytest
import torch

from modgap.config import ModelConfig
from modgap.errors import ConfigError, DataError
from modgap.models import ENCODERS
from modgap.models.resnet import BasicBlock, resnet18


def build(name: str, shape: tuple[int, ...], **cfg) -> torch.nn.Module:
    torch.manual_seed(0)
    return ENCODERS.get(name)(shape, ModelConfig(**cfg))


@pytest.mark.parametrize("name, shape", [
    ("resnet18_audio", (40, 30)),
    ("resnet18_frames", (2, 3, 32, 32)),
    ("resnet18_frames", (3, 1, 32, 32)),  # depth
    ("resnet18_frames", (2, 2, 32, 32)),  # optical flow
    ("resnet18_image", (3, 32, 32)),
    ("resnet18_image", (1, 20, 36)),
])
@pytest.mark.parametrize("width", [4, 8])
def test_resnet_shapes_and_out_dim(name, shape, width):
    enc = build(name, shape, width=width)
    assert enc.out_dim == 8 * width
    out = enc(torch.randn(3, *shape))
    assert out.shape == (3, 8 * width)
    assert torch.isfinite(out).all()


def test_input_channels_follow_the_input_shape():
    assert build("resnet18_audio", (40, 30), width=4).conv1.in_channels == 1
    assert build("resnet18_frames", (2, 2, 32, 32), width=4).conv1.in_channels == 2
    assert build("resnet18_image", (1, 32, 32), width=4).conv1.in_channels == 1


@pytest.mark.parametrize("name, shape", [("resnet18_audio", (32, 32)), ("resnet18_frames", (2, 3, 32, 32)),
                                         ("resnet18_image", (3, 32, 32))])
def test_gradient_reaches_the_stem(name, shape):
    enc = build(name, shape, width=4)
    enc(torch.randn(2, *shape)).pow(2).sum().backward()
    grad = enc.conv1.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_wrong_input_rank_is_a_config_error():
    with pytest.raises(ConfigError, match="resnet18_frames"):
        build("resnet18_frames", (3, 32, 32), width=4)
    with pytest.raises(ConfigError, match="resnet18_audio"):
        build("resnet18_audio", (1, 40, 30), width=4)


def test_channels_last_gives_the_same_features():
    enc = build("resnet18_image", (3, 32, 32), width=4).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = enc(x)
    enc_cl = enc.to(memory_format=torch.channels_last)
    out = enc_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    out.sum().backward()  # and it trains


def test_frames_encoder_with_channels_last_frames():
    enc = build("resnet18_frames", (2, 3, 32, 32), width=4).to(memory_format=torch.channels_last).eval()
    x = torch.randn(2, 2, 3, 32, 32)
    # per-frame channels_last layout of a (B, T, C, H, W) tensor: not contiguous as a whole
    x_cl = x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    assert not x_cl.is_contiguous()
    torch.testing.assert_close(enc(x_cl), enc(x), rtol=1e-4, atol=1e-5)


def test_frames_encoder_averages_over_time():
    enc = build("resnet18_frames", (3, 3, 32, 32), width=4).eval()
    frame = torch.randn(2, 1, 3, 32, 32)
    with torch.no_grad():
        one = enc(frame)
        same = enc(frame.expand(2, 3, 3, 32, 32))
        a, b = torch.randn(2, 1, 3, 32, 32), torch.randn(2, 1, 3, 32, 32)
        mixed = enc(torch.cat([a, b], 1))
        torch.testing.assert_close(same, one, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mixed, (enc(a) + enc(b)) / 2, rtol=1e-5, atol=1e-6)


def test_parameter_count_matches_torchvision_resnet18_without_fc():
    enc = ENCODERS.get("resnet18_image")((3, 224, 224), ModelConfig(width=64))
    assert sum(p.numel() for p in enc.parameters()) == 11_176_512


def test_torchvision_state_dict_names():
    keys = set(resnet18(3, 4).state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.weight", "layer4.1.bn2.bias"} <= keys


def test_kaiming_init_and_optional_zero_init_residual():
    net = resnet18(3, 8)
    w = net.layer3[0].conv1.weight.detach()  # fan_out = 32 * 3 * 3
    assert abs(float(w.std()) - (2 / (32 * 9)) ** 0.5) < 0.2 * (2 / (32 * 9)) ** 0.5
    blocks = [m for m in net.modules() if isinstance(m, BasicBlock)]
    assert all(float(b.bn2.weight.detach().min()) == 1.0 for b in blocks)
    zeroed = resnet18(3, 8, zero_init_residual=True)
    assert all(float(b.bn2.weight.detach().abs().max()) == 0.0 for b in zeroed.modules() if isinstance(b, BasicBlock))


# ------------------------------------------------------------------------------------------ text
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("tiny-bert")
    words = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran"]
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(str(path))
    config = transformers.BertConfig(vocab_size=len(words) + 5, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(str(path))
    return path


def text_cfg(path, pool: str) -> ModelConfig:
    cfg = ModelConfig()
    object.__setattr__(cfg, "text_model", str(path))  # works whether or not ModelConfig declares the field
    object.__setattr__(cfg, "text_pool", pool)
    return cfg


def test_text_encoder_loads_a_local_model_and_pools(tiny_bert):
    from modgap.models.text import build_tokenizer, tokenize

    tok = build_tokenizer(str(tiny_bert))
    x = torch.from_numpy(tokenize(tok, ["the cat sat", "a dog ran on the mat"], max_len=10))
    assert x.dtype == torch.long and x.shape == (2, 2, 10)
    assert x[0, 1].tolist() == [1] * 5 + [0] * 5  # [CLS] the cat sat [SEP], then padding
    for pool in ("cls", "mean"):
        enc = ENCODERS.get("text")((2, 10), text_cfg(tiny_bert, pool)).eval()
        assert enc.out_dim == 16
        with torch.no_grad():
            assert enc(x).shape == (2, 16)


def test_text_mean_pooling_ignores_padding(tiny_bert):
    from modgap.models.text import build_tokenizer, tokenize

    tok = build_tokenizer(str(tiny_bert))
    short = torch.from_numpy(tokenize(tok, ["the cat sat"], max_len=5))
    long = torch.from_numpy(tokenize(tok, ["the cat sat"], max_len=12))
    long_junk = long.clone()
    long_junk[0, 0, 5:] = 7  # real token ids where the mask is 0
    enc = ENCODERS.get("text")((2, 12), text_cfg(tiny_bert, "mean")).eval()
    with torch.no_grad():
        ref = enc(short)
        torch.testing.assert_close(enc(long), ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(enc(long_junk), ref, rtol=1e-4, atol=1e-5)


def test_text_encoder_errors(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "missing"))):
        ENCODERS.get("text")((2, 8), text_cfg(tmp_path / "missing", "cls"))
    with pytest.raises(ConfigError, match="text_pool"):
        ENCODERS.get("text")((2, 8), text_cfg(tmp_path, "max"))
    with pytest.raises(ConfigError, match="text"):
        ENCODERS.get("text")((8,), text_cfg(tmp_path, "cls"))


def test_missing_transformers_is_one_config_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("No module named 'transformers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(ConfigError, match=r"modgap\[text\]"):
        ENCODERS.get("text")((2, 8), ModelConfig())
