"""Grad-CAM (Selvaraju et al. 2017) for the ResNet encoders of a trained model.

For a ResNet encoder (``resnet18_frames``, ``resnet18_image``, ``resnet18_audio``) the feature maps
A of its last stage (or ``stage``) are recorded in the forward pass; the score is the fused logit of
the true class (``method.predict``, what the protocol evaluates). The map of each image is

    cam = ReLU( sum_k w_k A_k ),   w_k = mean over positions of d score / d A_k,

upsampled bilinearly to the input size and divided by its maximum (0 where it is all zero). Frames
(T, C, H, W) go through the 2-D ResNet one by one, so every frame gets its own map. BatchNorm is in
eval mode, so each sample's map depends on that sample only.

Inputs are shown as the encoder sees them, with the ImageNet normalisation of the datasets undone
for 3-channel images (clipped to [0, 1]); 1-channel inputs (spectrograms) are shown min-max scaled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.base import IMAGENET_MEAN as _IMAGENET_MEAN
from ..data.base import IMAGENET_STD as _IMAGENET_STD
from ..errors import ConfigError, closest
from ..models.classifier import ModelOutput
from ..models.resnet import ResNet, ResNet18Audio, ResNet18Frames
from .plots import new_figure, save_figure

IMAGENET_MEAN = np.array(_IMAGENET_MEAN)
IMAGENET_STD = np.array(_IMAGENET_STD)


def resnet_modalities(model) -> list[str]:
    return [m for m, enc in model.encoders.items() if isinstance(enc, ResNet)]


def gradcam_maps(
    model,
    predict: Callable[[ModelOutput], torch.Tensor],
    inputs: dict[str, torch.Tensor],
    y: torch.Tensor,
    modality: str,
    stage: int | None = None,
) -> dict[str, np.ndarray]:
    """Grad-CAM of ``modality`` for the true class of the fused logits.

    Returns ``cam`` (B, T, H, W) in [0, 1] at the input resolution (T = 1 for images and
    spectrograms), ``coarse`` (B, T, h, w) the maps at the stage's resolution before upsampling and
    normalisation, ``fused`` (B, C) the fused logits and ``score`` (B,) the true-class logit."""
    encoder = model.encoders[modality]
    if not isinstance(encoder, ResNet):
        raise ConfigError(
            f"Grad-CAM needs a ResNet encoder; '{modality}' has {type(encoder).__name__}"
            f" (ResNet modalities here: {', '.join(resnet_modalities(model)) or 'none'})"
        )
    stage = stage or encoder.num_stages
    if not 1 <= stage <= encoder.num_stages:
        raise ConfigError(f"stage must be between 1 and {encoder.num_stages}, got {stage}")
    layer = getattr(encoder, f"layer{stage}")
    saved: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        saved["maps"] = output
        output.register_hook(lambda grad: saved.__setitem__("grad", grad))

    handle = layer.register_forward_hook(keep)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = model(inputs)
            fused = predict(out)
            score = fused.gather(1, y[:, None].to(fused.device)).squeeze(1)
            model.zero_grad(set_to_none=True)
            score.sum().backward()
    finally:
        handle.remove()
        model.train(was_training)
    maps, grad = saved["maps"].detach().float(), saved["grad"].detach().float()
    coarse = torch.relu((grad.mean((2, 3), keepdim=True) * maps).sum(1))  # (B*T, h, w)
    x = inputs[modality]
    size = x.shape[-2:]
    b = x.shape[0]
    t = x.shape[1] if isinstance(encoder, ResNet18Frames) else 1
    cam = F.interpolate(coarse[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(1).values.clamp_min(1e-12)[:, None, None]
    cam = torch.where(peak > 1e-12, cam / peak, torch.zeros_like(cam)).clamp(0, 1)
    model.zero_grad(set_to_none=True)
    return {
        "cam": cam.reshape(b, t, *size).cpu().numpy(),
        "coarse": coarse.reshape(b, t, *coarse.shape[-2:]).cpu().numpy(),
        "fused": fused.detach().float().cpu().numpy(),
        "score": score.detach().float().cpu().numpy(),
    }


def display_images(x: torch.Tensor, encoder) -> np.ndarray:
    """Inputs of one modality as (B, T, H, W, 3) or (B, T, H, W) arrays in [0, 1] for display."""
    x = x.detach().float().cpu()
    if isinstance(encoder, ResNet18Audio):
        x = x[:, None, None]  # (B, 1, 1, F, T)
    elif not isinstance(encoder, ResNet18Frames):
        x = x[:, None]  # (B, 1, C, H, W)
    a = x.numpy()
    if a.shape[2] == 3:
        a = a.transpose(0, 1, 3, 4, 2) * IMAGENET_STD + IMAGENET_MEAN
        return np.clip(a, 0.0, 1.0)
    a = a[:, :, 0]
    lo = a.min(axis=(2, 3), keepdims=True)
    hi = a.max(axis=(2, 3), keepdims=True)
    return (a - lo) / np.maximum(hi - lo, 1e-12)


def gradcam_figure(images: np.ndarray, cams: np.ndarray, title: str, spectrogram: bool = False):
    """One sample: top row the input frames, bottom row each with its Grad-CAM map overlaid."""
    t = images.shape[0]
    size = 2.6 if not spectrogram else 4.2
    fig = new_figure(max(size * t, 4.0) + 0.8, 2 * size * (0.75 if spectrogram else 1.0) + 0.6)
    axes = np.array(fig.subplots(2, t, squeeze=False))
    for k in range(t):
        img = images[k]
        kw = {"cmap": "gray"} if img.ndim == 2 else {}
        if spectrogram:
            kw.update(origin="lower", aspect="auto", cmap="magma")
        for row in (0, 1):
            ax = axes[row, k]
            ax.imshow(img, **kw)
            if row == 1:
                ax.imshow(
                    cams[k],
                    cmap="jet",
                    alpha=0.45,
                    vmin=0,
                    vmax=1,
                    **({"origin": "lower", "aspect": "auto"} if spectrogram else {}),
                )
            if spectrogram:
                ax.set(xlabel="time frame", ylabel="frequency bin")
            else:
                ax.set_xticks([])
                ax.set_yticks([])
            ax.set_title(("input" if row == 0 else "Grad-CAM") + (f", frame {k}" if t > 1 else ""), fontsize=9)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig.colorbar(
        ScalarMappable(Normalize(0, 1), "jet"),
        ax=axes[1, :].tolist(),
        shrink=0.9,
        label="Grad-CAM relevance (normalised)",
    )
    fig.suptitle(title, fontsize=10)
    fig.modgap_data = {"cam": cams, "frames": t}
    return fig


def run_gradcam(
    trainer,
    out: str | Path,
    samples: int = 4,
    split: str = "test",
    modalities: Sequence[str] | None = None,
    stage: int | None = None,
    rows: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Grad-CAM PNGs (and their JSON) of the first ``samples`` samples of ``split`` for each ResNet
    modality of a loaded run (load_trained); returns one record per PNG."""
    model = trainer.model
    available = resnet_modalities(model)
    chosen = list(modalities) if modalities else available
    for m in chosen:
        if m not in model.encoders:
            raise ConfigError(f"no modality '{m}' in this run{closest(m, tuple(model.encoders))}")
        if m not in available:
            raise ConfigError(f"Grad-CAM needs a ResNet encoder; '{m}' has {type(model.encoders[m]).__name__}")
    if not chosen:
        raise ConfigError("this run has no ResNet (image, frame or spectrogram) encoder for Grad-CAM")
    if samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {samples}")
    picked = np.asarray(rows if rows is not None else trainer.data.splits[split][:samples], dtype=np.int64)
    batch = trainer.data.batch(picked, train=False).to(trainer.device)
    out = Path(out)
    classes = trainer.data.classes
    records = []
    for m in chosen:
        result = gradcam_maps(model, trainer.method.predict, batch.inputs, batch.y, m, stage)
        images = display_images(batch.inputs[m], model.encoders[m])
        spectrogram = isinstance(model.encoders[m], ResNet18Audio)
        for i, row in enumerate(picked.tolist()):
            y = int(batch.y[i])
            pred = int(result["fused"][i].argmax())
            sid = trainer.data.ids[row]
            layer = stage or model.encoders[m].num_stages
            title = (
                f"{m}: sample {sid}, true {classes[y]}, fused prediction {classes[pred]}\n"
                f"Grad-CAM of layer{layer} for the true class's fused logit ({result['score'][i]:.2f})"
            )
            h, w = result["coarse"][i].shape[-2:]
            if h * w == 1:
                title += (
                    f"\nlayer{layer} maps are 1x1 at this input size: the map is flat (try --stage {max(layer - 1, 1)})"
                )
            fig = gradcam_figure(images[i], result["cam"][i], title, spectrogram)
            fig.modgap_data.update(
                {
                    "modality": m,
                    "id": sid,
                    "row": row,
                    "label": y,
                    "predicted": pred,
                    "coarse": result["coarse"][i],
                    "score": float(result["score"][i]),
                }
            )
            path = save_figure(fig, out / f"gradcam_{m}_{i:02d}.png")
            records.append(
                {
                    "path": str(path),
                    "modality": m,
                    "id": sid,
                    "label": classes[y],
                    "predicted": classes[pred],
                    "cam_shape": list(result["cam"][i].shape),
                }
            )
    return records
