"""Joint fusion with the authors' options computes what the authors' released fused attention computes.

The reference below is the fused attention of GitHub eugenelet/HIVE at a5160ce (`LlamaAttention_rework.forward`,
`LlamaRotaryEmbedding_3D`, `apply_multimodal_rotary_pos_emb` in `llava_next/model/language_model/paidge_llama.py`)
and the parts of `PaidgeLlamaForCausalLM` around it (strip the `<image>` token, `mm_proj` then the layer's own
`input_layernorm`), written out plainly and eagerly: a hand-written decoder loop over the same weights, with the
`--mm_qknorm True --mm_rope True --mm_proj_type ln_mlp` flags of `scripts/train/HIVE_florence.sh`, `--mm_kvproj False`
(stage 1) or `True` (stages 2-3). Masks are what transformers handed their layer under `--attn_implementation sdpa`:
none when nothing is padded (their layer then builds the causal mask itself), else an additive float mask.

One difference is deliberate: their `apply_multimodal_rotary_pos_emb` stacks row and column frequencies with
`dim=-2`, which moves frequency 2j to channel j and 2m+1 to channel 12+m of every key (text keys too) while queries
keep the standard rotary. `quirk=False` stacks them with `dim=-1` instead, keeping every frequency in its channel;
that is what `hive_hf` computes, and the tests show the quirk is a real difference.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from tiny import VISION, tiny_inputs
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from hive_hf import HiveConfig, HiveForConditionalGeneration
from hive_hf.modeling_hive import CACHE_NAME, _mrope_components

IMAGE_TOKEN_INDEX = -200  # LLaVA's placeholder id; stripped before embedding
TEXT = {  # head_dim 16: the authors' channel sections (3/16, 3/16, 2/16 of head_dim) need a multiple of 16
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 99, "max_position_embeddings": 128,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": True, "rms_norm_eps": 1e-5,
}
ATOL = 2e-5


# -- the authors' code, plainly ------------------------------------------------------------------------------------
def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rotary(inv_freq, position_ids):
    """`LlamaRotaryEmbedding` (position_ids (B, L)) and `LlamaRotaryEmbedding_3D` (position_ids (3, B, L))."""
    freqs = position_ids[..., None].float() * inv_freq  # (..., L, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def apply_multimodal_rotary_pos_emb(k, cos, sin, mrope_section, quirk):
    """Their function for the key (they call it with `(key_states, key_states, ...)` and keep the second output)."""
    mrope_section = mrope_section * 2
    stack_dim = -2 if quirk else -1

    def select(x):
        split = x.split(mrope_section, dim=-1)
        for_t = [split[2][2], split[5][2]]
        for_wh = [torch.cat([split[0], split[1]], dim=-1), torch.cat([split[3], split[4]], dim=-1)]
        for_wh = [torch.stack([w[0, :, :, ::2], w[1, :, :, 1::2]], dim=stack_dim).flatten(-2, -1) for w in for_wh]
        return torch.cat([for_wh[0], for_t[0], for_wh[1], for_t[1]], dim=-1).unsqueeze(1)

    return k * select(cos) + rotate_half(k) * select(sin)


def rms_norm(x, weight, eps):
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def eager_attention(q, k, v, mask, scaling):
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = q @ k.transpose(2, 3) * scaling
    if mask is not None:
        scores = scores + mask[..., : k.shape[-2]]
    weights = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
    return (weights @ v).transpose(1, 2)  # (B, T, H, D)


def fused_attention(attn, hidden_states, position_ids, attention_mask, image_embeds, media_offsets, past, inv_freq,
                    mm_kvproj, mm_rope, quirk, eps, state):
    """`LlamaAttention_rework.forward`, image path."""
    bsz, q_len, _ = hidden_states.size()
    hd, n_kv = attn.head_dim, attn.k_proj.out_features // attn.head_dim
    image_len = image_embeds.shape[1]
    image_side_len = math.isqrt(image_len)
    query_states = attn.q_proj(hidden_states).view(bsz, q_len, -1, hd).transpose(1, 2)
    key_states = attn.k_proj(hidden_states).view(bsz, q_len, -1, hd).transpose(1, 2)
    value_states = attn.v_proj(hidden_states).view(bsz, q_len, -1, hd).transpose(1, 2)

    position_ids = position_ids.expand(bsz, -1)
    left_pos_mask = position_ids < media_offsets.unsqueeze(1)
    right_pos_mask = ~left_pos_mask
    text_indices = position_ids + right_pos_mask * image_len
    image_indices = torch.arange(image_len).unsqueeze(0).expand(bsz, -1) + media_offsets.unsqueeze(1)
    position_ids = position_ids + right_pos_mask * (image_side_len if mm_rope else image_len)
    cos, sin = rotary(inv_freq, position_ids)
    query_states = rms_norm(apply_rotary(query_states, cos, sin), attn.hive_q_norm.weight, eps)

    if q_len > 1:
        k_proj, v_proj = (attn.image_k_proj, attn.image_v_proj) if mm_kvproj else (attn.k_proj, attn.v_proj)
        image_key_states = k_proj(image_embeds).view(bsz, image_len, -1, hd).transpose(1, 2)
        image_value_states = v_proj(image_embeds).view(bsz, image_len, -1, hd).transpose(1, 2)
        if mm_rope:
            image_position_id = torch.stack([torch.arange(image_side_len).repeat_interleave(image_side_len),
                                             torch.arange(image_side_len).tile(image_side_len),
                                             torch.full((image_len,), image_side_len // 2)])
        else:
            image_position_id = torch.arange(image_len)
        new_key_states = torch.empty((bsz, n_kv, q_len + image_len, hd))
        new_value_states = torch.empty_like(new_key_states)
        text_expanded = text_indices[:, None, :, None].expand(bsz, n_kv, -1, hd)
        image_expanded = image_indices[:, None, :, None].expand(bsz, n_kv, -1, hd)
        new_key_states.scatter_(2, text_expanded, key_states)
        new_key_states.scatter_(2, image_expanded, image_key_states)
        new_value_states.scatter_(2, text_expanded, value_states)
        new_value_states.scatter_(2, image_expanded, image_value_states)
        if mm_rope:
            new_position_ids = torch.empty((3, bsz, q_len + image_len), dtype=position_ids.dtype)
            new_position_ids.scatter_(2, text_indices.expand(3, bsz, -1), position_ids.expand(3, bsz, -1))
            new_position_ids.scatter_(2, image_indices.expand(3, bsz, -1),
                                      image_position_id[:, None].expand(3, bsz, -1) + media_offsets[:, None])
        else:
            new_position_ids = torch.empty((bsz, q_len + image_len), dtype=position_ids.dtype)
            new_position_ids.scatter_(1, text_indices, position_ids)
            image_positions = image_position_id[None].expand(bsz, -1) + media_offsets[:, None]
            new_position_ids.scatter_(1, image_indices, image_positions)
        key_states, value_states, position_ids = new_key_states, new_value_states, new_position_ids

    cos, sin = rotary(inv_freq, position_ids)
    if position_ids.ndim == 2:
        key_states = apply_rotary(key_states, cos, sin)
    else:
        key_states = apply_multimodal_rotary_pos_emb(key_states, cos, sin, [3 * hd // 16, 3 * hd // 16, 2 * hd // 16],
                                                     quirk)
    if past is not None:
        key_states, value_states = past.update(key_states, value_states)
    key_states = rms_norm(key_states, attn.hive_k_norm.weight, eps)

    if attention_mask is None and q_len != key_states.size(-2) and q_len > 1:
        attention_mask = torch.triu(torch.ones((bsz, 1, q_len, q_len)), diagonal=1)
        attention_mask = attention_mask.masked_fill(attention_mask == 1, torch.finfo(attention_mask.dtype).min)
    if attention_mask is not None:
        if state.get("image_attention_mask") is None:  # their module-level global, reset every forward
            new_attention_mask = torch.empty((bsz, 1, q_len, q_len + image_len))
            text_columns = text_indices[:, None, None, :].expand(bsz, 1, q_len, q_len)
            new_attention_mask.scatter_(-1, text_columns, attention_mask)
            col_idx = torch.arange(q_len + image_len).expand(bsz, -1)
            image_mask = (col_idx >= media_offsets.unsqueeze(1)) & (col_idx < media_offsets.unsqueeze(1) + image_len)
            new_attention_mask[:, 0].masked_fill_(image_mask.unsqueeze(1) & left_pos_mask.unsqueeze(-1),
                                                  torch.finfo(attention_mask.dtype).min)
            new_attention_mask[:, 0].masked_fill_(image_mask.unsqueeze(1) & right_pos_mask.unsqueeze(-1), 0.0)
            state["image_attention_mask"] = new_attention_mask
        attention_mask = state["image_attention_mask"]
    out = eager_attention(query_states, key_states, value_states, attention_mask, attn.scaling)
    return attn.o_proj(out.reshape(bsz, q_len, -1))


def plain_attention(attn, hidden_states, cos, sin, mask, past):
    """Stock Llama attention of a layer that is not fused."""
    bsz, q_len, _ = hidden_states.size()
    q = apply_rotary(attn.q_proj(hidden_states).view(bsz, q_len, -1, attn.head_dim).transpose(1, 2), cos, sin)
    k = apply_rotary(attn.k_proj(hidden_states).view(bsz, q_len, -1, attn.head_dim).transpose(1, 2), cos, sin)
    v = attn.v_proj(hidden_states).view(bsz, q_len, -1, attn.head_dim).transpose(1, 2)
    if past is not None:
        k, v = past.update(k, v)
    return attn.o_proj(eager_attention(q, k, v, mask, attn.scaling).reshape(bsz, q_len, -1))


class LayerCache:
    def __init__(self):
        self.k = self.v = None

    def update(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], 2)
        self.v = v if self.v is None else torch.cat([self.v, v], 2)
        return self.k, self.v


class AuthorsModel:
    """`PaidgeLlamaForCausalLM` over the weights of a HIVE model: one image per sequence at its `<image>` token."""

    def __init__(self, model: HiveForConditionalGeneration, mm_kvproj: bool, quirk: bool):
        self.model, self.mm_kvproj, self.quirk = model, mm_kvproj, quirk
        self.text_config = model.config.text_config
        self.mm_rope = model.config.image_rope == "2d"
        self.inv_freq = LlamaRotaryEmbedding(self.text_config).inv_freq
        self.eps = self.text_config.rms_norm_eps  # `LlamaRMSNorm(head_dim, eps=config.rms_norm_eps)`
        self.layers = model.language_model.model.layers
        self.caches = None
        self.image_embeds = None

    def set_image_embeds(self, pixel_values):
        """`encode_images`, `feature_select` (hidden_states indices), per fused layer `input_layernorm(mm_proj(x))`."""
        tower = self.model.vision_model.vision_tower
        hidden_states = tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states
        self.image_embeds = {}
        for layer_idx, select, projector in zip(self.model.config.cross_attention_layers,
                                                self.model.config.vision_feature_layers, self.model.projectors):
            x = F.layer_norm(hidden_states[select], (x_dim := hidden_states[select].shape[-1],), projector.norm.weight,
                             projector.norm.bias, eps=self.eps)
            assert x_dim == projector.norm.normalized_shape[0] and projector.norm.eps == self.eps
            x = F.linear(F.gelu(F.linear(x, projector.linear_1.weight, projector.linear_1.bias)),
                         projector.linear_2.weight, projector.linear_2.bias)
            self.image_embeds[layer_idx] = self.layers[layer_idx].input_layernorm(x)

    def __call__(self, input_ids, attention_mask=None, pixel_values=None, use_cache=False):
        batch = input_ids.shape[0]
        if pixel_values is not None:  # prefill: strip the image token, remember where it was
            image_indeces = torch.where(input_ids == IMAGE_TOKEN_INDEX)
            text_indeces = torch.where(input_ids != IMAGE_TOKEN_INDEX)
            input_ids = input_ids[text_indeces[0], text_indeces[1]].view(batch, -1)
            if attention_mask is not None:
                attention_mask = attention_mask[text_indeces[0], text_indeces[1]].view(batch, -1)
            self.media_offsets = image_indeces[-1]
            self.set_image_embeds(pixel_values)
            self.caches = [LayerCache() for _ in self.layers] if use_cache else None
        past = self.caches[0].k.shape[2] if self.caches and self.caches[0].k is not None else 0
        q_len = input_ids.shape[1]
        position_ids = torch.arange(past, past + q_len)[None]  # transformers' cache_position.unsqueeze(0)
        # The additive float mask for the stock layers: causal (+ padding); the fused layers get None when nothing
        # is padded, as under sdpa (their layer builds the causal mask itself at prefill, and uses none to decode).
        mask = torch.full((q_len, past + q_len), torch.finfo(torch.float32).min).triu(past + 1)[None, None]
        mask = mask.expand(batch, 1, -1, -1).clone()
        padded = attention_mask is not None and not bool(attention_mask.all())
        if padded:
            mask = mask.masked_fill(attention_mask[:, None, None, : past + q_len] == 0, torch.finfo(torch.float32).min)
        cos, sin = rotary(self.inv_freq, position_ids)
        state = {}
        h = self.model.language_model.model.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            x = layer.input_layernorm(h)
            past_i = self.caches[i] if self.caches else None
            if i in self.image_embeds:
                h = h + fused_attention(layer.self_attn, x, position_ids, mask if padded else None,
                                        self.image_embeds[i], self.media_offsets, past_i, self.inv_freq,
                                        self.mm_kvproj, self.mm_rope, self.quirk, self.eps, state)
            else:
                h = h + plain_attention(layer.self_attn, x, cos, sin, mask, past_i)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.model.language_model.lm_head(self.model.language_model.model.norm(h))


# -- fixtures ----------------------------------------------------------------------------------------------------------
def authors_model(stage: int, image_rope: str = "2d", seed: int = 0) -> HiveForConditionalGeneration:
    config = HiveConfig(
        vision_config=dict(VISION["siglip"]), text_config=dict(TEXT), vision_feature_layers=[1, 3],
        cross_attention_layers=[1, 3], projector_type="ln_mlp", qk_norm=True, image_rope=image_rope,
        image_position=1, image_kv=["shared", "separate", "separate"], llm_train_scope="fused_attention",
    )
    torch.manual_seed(seed)
    model = HiveForConditionalGeneration(config).eval()
    with torch.no_grad():  # away from their init values, so that every weight matters
        for name, param in model.named_parameters():
            if any(part in name for part in ("hive_q_norm", "hive_k_norm", "projectors.0.norm", "image_k_proj",
                                             "image_v_proj")):
                param.add_(0.3 * torch.randn_like(param))
    model.config.training_stage = stage
    return model


def authors_inputs(config, batch=2, caption=6, pad=0):
    """`[BOS] <image> caption` for them, `[BOS] caption` for us (image_position 1), right-padded by `pad` in row 1."""
    inputs = tiny_inputs(config, batch=batch, seq=caption)
    ours = torch.cat([torch.ones(batch, 1, dtype=torch.long), inputs["input_ids"]], 1)
    mask = torch.ones_like(ours)
    if pad:
        ours[1, -pad:] = 0
        mask[1, -pad:] = 0
    labels = ours.masked_fill(mask == 0, -100)
    labels[:, 0] = -100  # the BOS (and their image token) are not in the loss
    theirs = torch.cat([ours[:, :1], torch.full((batch, 1), IMAGE_TOKEN_INDEX), ours[:, 1:]], 1)
    their_mask = torch.cat([mask[:, :1], mask], 1)
    return inputs["pixel_values"], (ours, mask, labels), (theirs, their_mask)


def causal_lm_loss(logits, labels):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


def gradients(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# -- tests ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pad", [0, 2])
@pytest.mark.parametrize("stage, image_rope", [(1, "2d"), (2, "2d"), (2, "1d")])
def test_outputs_and_gradients_equal_the_authors_fused_attention(stage, image_rope, pad):
    model = authors_model(stage, image_rope)
    model.requires_grad_(True)  # every weight's gradient is compared, frozen or not in that stage
    reference = AuthorsModel(model, mm_kvproj=stage > 1, quirk=False)
    pixel_values, (ids, mask, labels), (their_ids, their_mask) = authors_inputs(model.config, pad=pad)

    ours = model(pixel_values=pixel_values, input_ids=ids, attention_mask=mask).logits
    theirs = reference(their_ids, their_mask, pixel_values)
    valid = mask.bool()
    torch.testing.assert_close(ours[valid], theirs[valid], atol=ATOL, rtol=0)

    our_grads = gradients(model, causal_lm_loss(ours, labels))
    their_grads = gradients(model, causal_lm_loss(theirs, labels))
    assert our_grads.keys() == their_grads.keys()
    image_kv = [n for n in our_grads if "image_k_proj" in n or "image_v_proj" in n]
    assert bool(image_kv) == (stage > 1)  # stage 1 projects the image with the layer's own k/v
    assert any("hive_q_norm" in n for n in our_grads) and any(n.startswith("vision_model.") for n in our_grads)
    for name in our_grads:
        torch.testing.assert_close(our_grads[name], their_grads[name], atol=ATOL, rtol=1e-4, msg=name)


def test_the_authors_frequency_index_quirk_is_a_real_difference():
    model = authors_model(stage=2)
    pixel_values, (ids, mask, _), (their_ids, their_mask) = authors_inputs(model.config)
    with torch.no_grad():
        ours = model(pixel_values=pixel_values, input_ids=ids, attention_mask=mask).logits
        quirk = AuthorsModel(model, mm_kvproj=True, quirk=True)(their_ids, their_mask, pixel_values)
    assert (ours - quirk).abs().max() > 1e-3


def test_cached_generation_equals_the_authors_decoding():
    """Prefill with the image, then one token at a time from the cache; no padding (their decode takes no mask)."""
    model = authors_model(stage=2)
    reference = AuthorsModel(model, mm_kvproj=True, quirk=False)
    pixel_values, (ids, mask, _), (their_ids, their_mask) = authors_inputs(model.config)
    steps = 5
    with torch.no_grad():
        out = model(pixel_values=pixel_values, input_ids=ids, attention_mask=mask, use_cache=True)
        theirs = reference(their_ids, their_mask, pixel_values, use_cache=True)
        torch.testing.assert_close(out.logits, theirs, atol=ATOL, rtol=0)
        cache, image_kv, tokens = getattr(out, CACHE_NAME), out.image_key_values, []
        for _ in range(steps):
            token = out.logits[:, -1:].argmax(-1)
            tokens.append(token)
            mask = torch.cat([mask, torch.ones_like(token)], 1)
            out = model(input_ids=token, attention_mask=mask, image_key_values=image_kv, cache=cache, use_cache=True)
            cache = getattr(out, CACHE_NAME)
            theirs = reference(token)
            torch.testing.assert_close(out.logits, theirs, atol=ATOL, rtol=0)
        generated = model.generate(pixel_values=pixel_values, input_ids=ids, attention_mask=mask[:, : ids.shape[1]],
                                   max_new_tokens=steps, do_sample=False, pad_token_id=0)
    assert generated[:, ids.shape[1]:].tolist() == torch.cat(tokens, 1).tolist()


def test_2d_image_key_channels_follow_the_authors_sections_without_the_permutation():
    """head_dim 64 (MobileLLM-600M): rows on even frequencies 0..22, columns on odd 1..23, the third on 24..31."""
    components = _mrope_components(64, torch.device("cpu"))
    frequency = torch.arange(64) % 32
    assert components[frequency < 24].tolist() == (frequency[frequency < 24] % 2).tolist()
    assert (components[frequency >= 24] == 2).all()
    # Same per-channel (component, frequency) as their function with the quirk removed, for random positions.
    inv_freq = 10000.0 ** (-torch.arange(0, 64, 2).float() / 64)
    positions = torch.randint(0, 50, (3, 1, 7))
    cos, sin = rotary(inv_freq, positions)  # (3, 1, 7, 64)
    key = torch.randn(1, 2, 7, 64)
    theirs = apply_multimodal_rotary_pos_emb(key, cos, sin, [12, 12, 8], quirk=False)
    picked = components[None, None].expand(1, 7, -1)
    ours = apply_rotary(key, cos[:, 0].gather(0, picked), sin[:, 0].gather(0, picked))
    torch.testing.assert_close(ours, theirs)
    quirked = apply_multimodal_rotary_pos_emb(key, cos, sin, [12, 12, 8], quirk=True)
    assert not torch.allclose(ours, quirked)
    # a text key (three equal components) gets exactly the queries' 1-D rotary
    same = positions[:1].expand(3, -1, -1)
    cos, sin = rotary(inv_freq, same)
    torch.testing.assert_close(apply_multimodal_rotary_pos_emb(key, cos, sin, [12, 12, 8], quirk=False),
                               apply_rotary(key, cos[0], sin[0]))
