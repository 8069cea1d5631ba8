"""How much of the LM loss's gradient reaches each encoder layer (paper Sec. 4.3, Fig. 2 and appendix Sec. 9.1).

The paper argues that cross-attention from intermediate layers sends more gradient into the early encoder layers
than final-layer-only (cascaded, SA) training, and shows it as per-layer gradient pictures. Here it is a number per
layer and a picture per layer, for any fusion mode, on one batch:

- `hidden_grad_norms[i]`: the norm of d loss / d (output of encoder block i+1), over the whole batch;
- `param_grad_norms[i]`: the norm of the gradient of block i+1's parameters;
- `patch_maps[i]`: for each image, the norm over channels of d loss / d (block output) at every patch, on the patch
  grid (a CLIP class token dropped).
Blocks deeper than the deepest tapped layer are never run (the encoder stops there), so their gradient is zero.

    python -m hive_hf.cli.gradient_flow --hive outputs/demo/stage3 --baseline outputs/demo_sa/stage3
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
from transformers.utils import logging

from ..modeling_hive import HiveForConditionalGeneration
from ..processing_hive import HiveProcessor
from ._common import to_patch_grid

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402

logger = logging.get_logger(__name__)


@dataclass
class GradientFlow:
    r"""
    layers (`list[int]`): encoder blocks as `hidden_states` indices, 1 .. num_hidden_layers.
    tapped_layers (`list[int]`): the model's `vision_feature_layers`.
    hidden_grad_norms (`list[float]`): per block, the norm of d loss / d (block output) over the batch.
    param_grad_norms (`list[float]`): per block, the norm of the gradient of its parameters.
    patch_maps (`torch.Tensor` of shape `(num_layers, batch_size, grid, grid)`): per block and image, the norm over
        channels of d loss / d (block output) at each patch.
    loss (`float`): the LM loss the gradients are of.
    """

    layers: list[int]
    tapped_layers: list[int]
    hidden_grad_norms: list[float]
    param_grad_norms: list[float]
    patch_maps: torch.Tensor
    loss: float

    def relative(self, values: list[float]) -> list[float]:
        """`values` divided by the value at the deepest tapped layer (the loss's scale cancels between models)."""
        ref = values[max(self.tapped_layers) - 1]
        return [v / ref if ref else math.nan for v in values]

    def patch_entropy(self) -> list[float]:
        """Per block, how spread the gradient is over the patches: the entropy of the per-patch gradient norms
        (normalised to sum to one) divided by its maximum, averaged over the images; 1 = even over the image, lower =
        concentrated on fewer patches ("granular, localized" in the paper's words), nan where no gradient arrived."""
        maps = self.patch_maps.flatten(2).double()  # (layers, B, patches)
        total = maps.sum(-1, keepdim=True)
        p = maps / total.clamp(min=1e-300)
        entropy = -(p * p.clamp(min=1e-300).log()).sum(-1) / math.log(maps.shape[-1])
        entropy[total.squeeze(-1) == 0] = math.nan
        return entropy.mean(-1).tolist()

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("patch_maps")
        out["patch_entropy"] = self.patch_entropy()
        return out


def _blocks(model: HiveForConditionalGeneration) -> torch.nn.ModuleList:
    encoder = getattr(model.vision_model.vision_tower, "encoder", None)
    blocks = getattr(encoder, "layers", None)
    if blocks is None:
        raise ValueError(
            f"{type(model.vision_model.vision_tower).__name__} has no `encoder.layers`; gradient flow needs a "
            "ViT-style tower (SigLIP, CLIP)."
        )
    return blocks


def encoder_gradient_flow(
    model: HiveForConditionalGeneration,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> GradientFlow:
    """Per-layer gradient norms and per-patch gradient maps of the LM loss in the vision encoder, for one batch.

    `labels` default to `input_ids` with padding ignored. Every encoder parameter takes part, whatever the model's
    training stage (the gradient reaching a layer does not depend on what is frozen); the trainable flags are
    restored afterwards and all `.grad` are cleared.
    """
    blocks = _blocks(model)
    if labels is None:
        labels = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, -100)
    outputs: dict[int, torch.Tensor] = {}

    def keep(index: int):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if hidden.requires_grad:
                hidden.retain_grad()
                outputs[index] = hidden

        return hook

    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    handles = [block.register_forward_hook(keep(i)) for i, block in enumerate(blocks)]
    try:
        for param in model.vision_model.parameters():
            param.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            out = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            out.loss.backward()
        batch, grid_shape = pixel_values.shape[0], None
        hidden_norms, param_norms, maps = [], [], []
        for i, block in enumerate(blocks):
            hidden = outputs.get(i)
            grad = hidden.grad if hidden is not None else None
            if grad is None:  # never run (deeper than the deepest tap) or unused: no gradient reached it
                hidden_norms.append(0.0)
                maps.append(None)
            else:
                hidden_norms.append(grad.float().norm().item())
                maps.append(to_patch_grid(grad.float().norm(dim=-1), model.config).cpu())  # (B, grid, grid)
                grid_shape = maps[-1].shape
            squares = [p.grad.float().pow(2).sum() for p in block.parameters() if p.grad is not None]
            param_norms.append(torch.stack(squares).sum().sqrt().item() if squares else 0.0)
        if grid_shape is None:  # no layer got a gradient
            grid_shape = (batch, *to_patch_grid(torch.zeros(model.config.num_image_tokens), model.config).shape)
        patch_maps = torch.stack([m if m is not None else torch.zeros(grid_shape) for m in maps])
        loss = out.loss.item()
    finally:
        for handle in handles:
            handle.remove()
        for name, param in model.named_parameters():
            param.requires_grad_(flags[name])
        model.zero_grad(set_to_none=True)
    return GradientFlow(
        layers=list(range(1, len(blocks) + 1)),
        tapped_layers=list(model.config.vision_feature_layers),
        hidden_grad_norms=hidden_norms,
        param_grad_norms=param_norms,
        patch_maps=patch_maps,
        loss=loss,
    )


@dataclass
class GradientFlowSummary:
    r"""
    The gradient reaching each encoder block over many batches (and checkpoints): per block the mean and the sample
    standard deviation, absolute (`hidden_*`) and relative to the deepest tapped layer of the same batch
    (`relative_*`, so that the loss's scale cancels batch by batch).

    layers (`list[int]`), tapped_layers (`list[int]`): as in :class:`GradientFlow`.
    hidden_mean / hidden_std / relative_mean / relative_std (`list[float]`): per block.
    entropy_mean / entropy_std (`list[float]`): per block, :meth:`GradientFlow.patch_entropy`.
    num_batches (`int`): how many (checkpoint, batch) measurements were summarised.
    """

    layers: list[int]
    tapped_layers: list[int]
    hidden_mean: list[float]
    hidden_std: list[float]
    relative_mean: list[float]
    relative_std: list[float]
    entropy_mean: list[float]
    entropy_std: list[float]
    num_batches: int


def summarize_flows(flows: list[GradientFlow]) -> GradientFlowSummary:
    """Mean and spread per block of many :class:`GradientFlow` measurements of models with the same taps."""
    if not flows:
        raise ValueError("summarize_flows needs at least one GradientFlow.")
    absolute = torch.tensor([f.hidden_grad_norms for f in flows], dtype=torch.float64)  # (M, layers)
    relative = torch.tensor([f.relative(f.hidden_grad_norms) for f in flows], dtype=torch.float64)
    entropy = torch.tensor([f.patch_entropy() for f in flows], dtype=torch.float64)

    def spread(values: torch.Tensor) -> list[float]:
        return values.std(0).tolist() if len(flows) > 1 else [0.0] * values.shape[1]

    return GradientFlowSummary(
        layers=flows[0].layers, tapped_layers=flows[0].tapped_layers,
        hidden_mean=absolute.mean(0).tolist(), hidden_std=spread(absolute),
        relative_mean=relative.mean(0).tolist(), relative_std=spread(relative),
        entropy_mean=entropy.mean(0).tolist(), entropy_std=spread(entropy), num_batches=len(flows),
    )


def gradient_flow_over_batches(
    model: HiveForConditionalGeneration,
    processor: HiveProcessor,
    images: list,
    captions: list[str],
    batch_size: int = 16,
) -> list[GradientFlow]:
    """:func:`encoder_gradient_flow` on consecutive batches of `images`/`captions` (one measurement per batch)."""
    flows = []
    for start in range(0, len(captions), batch_size):
        batch = processor(images=images[start:start + batch_size], text=captions[start:start + batch_size],
                          add_eos=True, return_labels=True)
        flows.append(encoder_gradient_flow(model, batch["pixel_values"], batch["input_ids"],
                                           batch["attention_mask"], batch["labels"]))
    return flows


def summary_table(summaries: Mapping[str, GradientFlowSummary]) -> str:
    """A markdown table, one row per encoder block: per model `mean ± std` of the gradient norm at the block's
    output, absolute and relative to the deepest tapped layer (`*` marks tapped layers), and of its spread over the
    patches (normalised entropy: 1 even, lower concentrated)."""
    names = list(summaries)
    head = (["layer"] + [f"{n} ‖dL/dh‖" for n in names] + [f"{n} rel. to deepest tap" for n in names]
            + [f"{n} patch entropy" for n in names])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, layer in enumerate(summaries[names[0]].layers):
        cells = [str(layer)]
        for name in names:
            s = summaries[name]
            mark = "*" if layer in s.tapped_layers else ""
            cells.append(f"{s.hidden_mean[i]:.3g} ± {s.hidden_std[i]:.2g}{mark}")
        for name in names:
            s = summaries[name]
            cells.append(f"{s.relative_mean[i]:.3g} ± {s.relative_std[i]:.2g}")
        for name in names:
            s = summaries[name]
            cells.append(f"{s.entropy_mean[i]:.3f} ± {s.entropy_std[i]:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gradient_flow_table(flows: Mapping[str, GradientFlow]) -> str:
    """A markdown table, one row per encoder layer: for each model the gradient norm at the block output and of its
    parameters, absolute and relative to the model's deepest tapped layer (`*` marks tapped layers)."""
    names = list(flows)
    head = ["layer"]
    for name in names:
        head += [f"{name} ‖dL/dh‖", f"{name} rel.", f"{name} ‖dL/dθ‖", f"{name} rel."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rel = {n: (f.relative(f.hidden_grad_norms), f.relative(f.param_grad_norms)) for n, f in flows.items()}
    layers = flows[names[0]].layers
    for i, layer in enumerate(layers):
        cells = [str(layer)]
        for name in names:
            flow = flows[name]
            mark = "*" if layer in flow.tapped_layers else ""
            cells += [f"{flow.hidden_grad_norms[i]:.3e}{mark}", f"{rel[name][0][i]:.3f}",
                      f"{flow.param_grad_norms[i]:.3e}", f"{rel[name][1][i]:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "LM loss of the batch: " + ", ".join(f"{n} {flows[n].loss:.4f}" for n in names)]
    return "\n".join(lines)


def plot_gradient_maps(
    flows: Mapping[str, GradientFlow],
    images: Mapping[str, np.ndarray] | np.ndarray,
    path: str | Path,
    sample: int = 0,
    title: str | None = None,
) -> Path:
    """A PNG grid: one row per model, columns the input image then encoder layers 1..N, each map the per-patch
    gradient norm of image `sample` (colours min-max scaled per panel, to show where the gradient goes; the panel
    title gives the layer's total norm, to compare how much arrives)."""
    path = Path(path)
    names = list(flows)
    columns = 1 + len(flows[names[0]].layers)
    fig, axes = plt.subplots(len(names), columns, figsize=(1.6 * columns, 2.0 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        flow = flows[name]
        image = images[name] if isinstance(images, Mapping) else images
        axes[row, 0].imshow(image)
        axes[row, 0].set_title("input", fontsize=8)
        axes[row, 0].set_ylabel(name, fontsize=9)
        for col, layer in enumerate(flow.layers, start=1):
            grad_map = flow.patch_maps[col - 1, sample].numpy()
            ax = axes[row, col]
            low, high = float(grad_map.min()), float(grad_map.max())
            ax.imshow(grad_map, cmap="inferno", vmin=low, vmax=high if high > low else low + 1.0)
            tapped = "*" if layer in flow.tapped_layers else ""
            ax.set_title(f"L{layer}{tapped} {flow.hidden_grad_norms[col - 1]:.1e}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "d loss / d encoder layer output: per-patch norm, min-max per panel (* = tapped layer)",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
