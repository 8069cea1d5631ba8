"""Where each text token looks in the image, at every fused LLM layer (paper Sec. 4.4, Fig. 3, appendix Sec. 9.2).

The paper shows HIVE's text-to-image attention per fused layer and reads it as "early layers attend locally, later
ones broadly". `text_to_image_attention` takes the `image_attentions` the model returns (joint and gated: one per
fused layer; concat, which needs eager attention: every LLM layer), averages them over heads and puts them on the
patch grid (a CLIP class token dropped); `attention_summary` turns "local" and "broad" into numbers per layer:

- `entropy`: of the attention over patches, divided by log(#patches): 0 = one patch, 1 = uniform;
- `spread`: attention-weighted RMS distance of the patches from their attention centroid, as a fraction of the grid
  side (0 = one patch, about 0.41 = uniform);
- `peak`: the largest patch's attention over the uniform share (1 = uniform, #patches = all on one patch);
- `image_mass`: the share of the token's attention that goes to the image at all (joint and concat also attend to
  text; gated attends to the image only, so it is 1).

    python -m hive_hf.cli.attention_maps outputs/demo/stage3 --caption "two red circles in the top left." \\
        --tokens red circles
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
from transformers.utils import logging

from ..configuration_hive import HiveConfig
from ..modeling_hive import HiveForConditionalGeneration
from ._common import to_patch_grid

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402

logger = logging.get_logger(__name__)


@dataclass
class AttentionMaps:
    r"""
    tokens (`list[str]`): the chosen tokens as the tokenizer spells them.
    positions (`list[int]`): their positions in `input_ids` (the query of that position is shown).
    layers (`list[int]`): 0-based LLM layers shown.
    vision_layers (`list[int | None]`): the encoder layer (`hidden_states` index) feeding each shown LLM layer.
    maps (`torch.Tensor` of shape `(num_tokens, num_layers, grid, grid)`): head-averaged attention to each patch,
        normalised to sum to 1 over the patches.
    image_mass (`torch.Tensor` of shape `(num_tokens, num_layers)`): head-averaged attention on all image tokens
        (class token included) before normalisation; at most 1.
    entropy, spread, peak (`torch.Tensor` of shape `(num_tokens, num_layers)`): see the module docstring.
    """

    tokens: list[str]
    positions: list[int]
    layers: list[int]
    vision_layers: list[int | None]
    maps: torch.Tensor
    image_mass: torch.Tensor
    entropy: torch.Tensor
    spread: torch.Tensor
    peak: torch.Tensor


def _entropy_and_spread(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised entropy and RMS spread of `(..., grid, grid)` distributions."""
    grid_h, grid_w = maps.shape[-2:]
    flat = maps.flatten(-2)
    entropy = -(flat * flat.clamp(min=1e-12).log()).sum(-1) / math.log(flat.shape[-1])
    rows = torch.arange(grid_h, dtype=maps.dtype).view(grid_h, 1).expand(grid_h, grid_w).flatten()
    cols = torch.arange(grid_w, dtype=maps.dtype).view(1, grid_w).expand(grid_h, grid_w).flatten()
    mean_r, mean_c = (flat * rows).sum(-1, keepdim=True), (flat * cols).sum(-1, keepdim=True)
    variance = (flat * ((rows - mean_r) ** 2 + (cols - mean_c) ** 2)).sum(-1)
    return entropy, variance.sqrt() / max(grid_h, grid_w)


def fused_layers(config: HiveConfig) -> tuple[list[int], list[int | None]]:
    """The LLM layers that return image attention and the encoder layer feeding each (concat: every LLM layer, all
    fed by the one tapped layer through the input sequence)."""
    if config.fusion == "concat":
        layers = list(range(config.text_config.num_hidden_layers))
        return layers, [config.vision_feature_layers[0]] * len(layers)
    return list(config.cross_attention_layers), list(config.vision_feature_layers)


def text_to_image_attention(
    model: HiveForConditionalGeneration,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    positions: list[int],
    attention_mask: torch.Tensor | None = None,
    layers: list[int] | None = None,
    sample: int = 0,
    token_names: list[str] | None = None,
) -> AttentionMaps:
    """Head-averaged text-to-image attention of the queries at `positions` of image `sample`, at each LLM layer in
    `layers` (default: every layer that returns image attention; see `fused_layers`), on the patch grid.
    `token_names` label the rows (default: the positions)."""
    available, vision_layers = fused_layers(model.config)
    layers = available if layers is None else list(layers)
    missing = [layer for layer in layers if layer not in available]
    if missing:
        raise ValueError(f"LLM layers {missing} return no image attention; this model's are {available}.")
    seq_len = input_ids.shape[1]
    positions = [p + seq_len if p < 0 else p for p in positions]
    bad = [p for p in positions if not 0 <= p < seq_len]
    if bad:
        raise ValueError(f"Token positions {bad} are outside the sequence of length {seq_len}.")
    with torch.no_grad():
        out = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                    output_attentions=True)
    chosen = []
    for layer in layers:
        weights = out.image_attentions[available.index(layer)][sample].float().mean(0)  # (T, N): averaged over heads
        chosen.append(weights[positions])  # (tokens, N)
    weights = torch.stack(chosen, dim=1).cpu()  # (tokens, layers, N)
    image_mass = weights.sum(-1)
    patches = to_patch_grid(weights, model.config)  # (tokens, layers, grid, grid)
    maps = patches / patches.flatten(-2).sum(-1)[..., None, None].clamp(min=1e-12)
    entropy, spread = _entropy_and_spread(maps)
    return AttentionMaps(
        tokens=list(token_names) if token_names is not None else [str(p) for p in positions],
        positions=positions,
        layers=layers,
        vision_layers=[vision_layers[available.index(layer)] for layer in layers],
        maps=maps,
        image_mass=image_mass,
        entropy=entropy,
        spread=spread,
        peak=maps.flatten(-2).amax(-1) * maps[0, 0].numel(),
    )


def _normalise_token(token: str) -> str:
    """`▁red`, `Ġred`, `##red`, `red` -> `red` (SentencePiece, byte-level BPE and WordPiece spellings)."""
    return re.sub(r"^(▁|Ġ|##)", "", token).lower()


def find_token_positions(tokenizer, input_ids: torch.Tensor, tokens: list[str | int], sample: int = 0) -> list[int]:
    """Positions in `input_ids[sample]` of `tokens`: integers are positions (negative from the end), strings match a
    token as the tokenizer spells it (ignoring case and word-start markers), first occurrence, else the first token
    that starts the word."""
    ids = input_ids[sample].tolist()
    spelled = [_normalise_token(t) for t in tokenizer.convert_ids_to_tokens(ids)]
    positions = []
    for token in tokens:
        if isinstance(token, int) or (isinstance(token, str) and re.fullmatch(r"-?\d+", token)):
            positions.append(int(token) % len(ids))
            continue
        wanted = _normalise_token(token)
        matches = [i for i, s in enumerate(spelled) if s == wanted] or [
            i for i, s in enumerate(spelled) if s and wanted.startswith(s) and len(s) > 1
        ]
        if not matches:
            raise ValueError(f"Token {token!r} is not in the tokenized caption; its tokens are {spelled}.")
        positions.append(matches[0])
    return positions


def attention_summary(maps: AttentionMaps) -> list[dict[str, float]]:
    """Per shown layer: entropy, spread, peak and image mass averaged over the chosen tokens."""
    return [
        {
            "llm_layer": layer,
            "vision_layer": maps.vision_layers[j],
            "entropy": maps.entropy[:, j].mean().item(),
            "spread": maps.spread[:, j].mean().item(),
            "peak": maps.peak[:, j].mean().item(),
            "image_mass": maps.image_mass[:, j].mean().item(),
        }
        for j, layer in enumerate(maps.layers)
    ]


def summary_table(rows: list[dict[str, float]], title: str | None = None) -> str:
    lines = [title, ""] if title else []
    lines += ["| LLM layer | encoder layer | entropy (0 one patch, 1 uniform) | spread (fraction of grid) | "
              "peak / uniform | image mass |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['llm_layer']} | {r['vision_layer']} | {r['entropy']:.4f} | {r['spread']:.3f} | "
                     f"{r['peak']:.2f} | {r['image_mass']:.3f} |")
    return "\n".join(lines)


def attention_map_grid(maps: AttentionMaps, size: tuple[int, int]) -> np.ndarray:
    """The maps upsampled (nearest patch) to an image of `size` (H, W): `(num_tokens, num_layers, H, W)`."""
    grid = maps.maps
    up = torch.nn.functional.interpolate(grid.flatten(0, 1)[:, None], size=size, mode="nearest")[:, 0]
    return up.view(*grid.shape[:2], *size).numpy()


def plot_attention_maps(maps: AttentionMaps, image: np.ndarray, path: str | Path, title: str | None = None) -> Path:
    """A PNG grid: one row per token, one column per layer, each panel the image under its attention map (colours
    min-max scaled per panel, to show where the attention goes; the panel's label gives the entropy and the share
    of attention on the image, to show how concentrated it is)."""
    path = Path(path)
    overlays = attention_map_grid(maps, image.shape[:2])
    rows, cols = overlays.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(max(1.9 * cols + 0.6, 5.5), 2.4 * rows + 0.7), squeeze=False)
    for i in range(rows):
        for j in range(cols):
            ax = axes[i, j]
            ax.imshow(image)
            low, high = float(overlays[i, j].min()), float(overlays[i, j].max())
            ax.imshow(overlays[i, j], cmap="jet", alpha=0.5, vmin=low, vmax=high if high > low else low + 1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"H={maps.entropy[i, j]:.3f} peak={maps.peak[i, j]:.2f} img={maps.image_mass[i, j]:.2f}",
                          fontsize=7)
            if i == 0:
                source = f" <- enc {maps.vision_layers[j]}" if maps.vision_layers[j] is not None else ""
                ax.set_title(f"LLM {maps.layers[j]}{source}", fontsize=8)
            if j == 0:
                ax.set_ylabel(maps.tokens[i], fontsize=9)
    default_title = ("text-to-image attention, head-averaged, min-max per panel\nH: entropy over patches (0 one "
                     "patch, 1 uniform); peak: top patch / uniform;\nimg: share of attention on the image")
    fig.suptitle(title or default_title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
