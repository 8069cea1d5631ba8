"""Tiny stand-ins for real backbones: a SigLIP tower, a Llama decoder and a word-level tokenizer.

They are written to folders exactly like Hub checkpoints, so every script runs offline through the same
`from_pretrained` paths that real checkpoints use (`--tiny_backbones` in the examples, and the tests).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
)

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
# A chat template for the tiny tokenizer (`chat_template=True`): each turn is `<|role|>`, its text and EOS, so a
# generated answer ends at EOS; its role markers are special tokens.
CHAT_ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def build_word_tokenizer(texts: Iterable[str], lowercase: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the words and punctuation of `texts` (lower-cased unless `lowercase=False`), with
    Llama-style BOS."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    words = sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]", text.lower() if lowercase else text)})
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS.values(), *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def tiny_configs(
    vocab_size: int = len(SPECIAL_TOKENS),
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 64,
    num_layers: int = 4,
    **text_kwargs: int,
) -> tuple[SiglipVisionConfig, LlamaConfig]:
    """The configs `write_tiny_backbones` builds its tower and LLM from (the vocabulary comes from the texts; a run
    can check its wiring against these before any text is read). `text_kwargs` are the tokenizer's special ids."""
    vision = SiglipVisionConfig(
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=4, image_size=image_size, patch_size=patch_size,
    )
    text = LlamaConfig(
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=256,
        tie_word_embeddings=True, **text_kwargs,
    )
    return vision, text


def write_tiny_backbones(
    folder: str | Path,
    texts: Iterable[str],
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 64,
    num_layers: int = 4,
    seed: int = 0,
    text_pretrain_steps: int = 0,
    images: Sequence | None = None,
    vision_pretrain_steps: int = 0,
    chat_template: bool = False,
    lowercase: bool = True,
    show_progress: bool = True,
) -> tuple[str, str]:
    """Write `folder/vision` (SiglipVisionModel + image processor) and `folder/text` (LlamaForCausalLM +
    tokenizer); returns their paths. Deterministic for a given seed. `show_progress=False` hides the pre-training
    progress bars (the scripts pass `not --disable_tqdm`).

    HIVE starts from a pretrained LLM and a pretrained vision tower. `text_pretrain_steps` > 0 first trains the
    tiny LLM on `texts` alone (no images); `vision_pretrain_steps` > 0 trains the tiny tower SigLIP-style (sigmoid
    image-text contrastive loss against a bag-of-words text encoder that is then thrown away) on `images` paired
    with `texts`. The demo's stage 1 then connects two pretrained models, as in the paper.

    `chat_template=True` gives the tokenizer `CHAT_TEMPLATE` (its role markers become special tokens), for chat-style
    fine-tuning; `lowercase=False` keeps case (e.g. option letters, which lmms-eval's ScienceQA scoring wants upper-case).
    """
    folder = Path(folder)
    texts = list(texts)
    tokenizer = build_word_tokenizer(texts, lowercase=lowercase)
    if chat_template:
        tokenizer.add_special_tokens({"additional_special_tokens": list(CHAT_ROLE_TOKENS)})
        tokenizer.chat_template = CHAT_TEMPLATE
    vision_config, text_config = tiny_configs(
        len(tokenizer), image_size, patch_size, hidden_size, num_layers, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    vision = SiglipVisionModel(vision_config)
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    if vision_pretrain_steps > 0:
        if images is None or len(images) != len(texts):
            raise ValueError("`vision_pretrain_steps` needs `images`, one per text.")
        _pretrain_vision(vision, image_processor, tokenizer, list(images), texts, vision_pretrain_steps, seed,
                         show_progress=show_progress)
    vision.save_pretrained(folder / "vision")
    image_processor.save_pretrained(folder / "vision")
    llm = LlamaForCausalLM(text_config)
    if text_pretrain_steps > 0:
        _pretrain_text(llm, tokenizer, texts, text_pretrain_steps, seed, show_progress=show_progress)
    llm.save_pretrained(folder / "text")
    tokenizer.save_pretrained(folder / "text")
    return str(folder / "vision"), str(folder / "text")


def _optimizer(params: list[torch.nn.Parameter], lr: float, steps: int):
    """AdamW with linear warm-up over the first 10% of the steps and cosine decay to zero, as real pre-training does.

    A constant learning rate is what made these backbones fragile: once the loss reaches the captions' entropy floor,
    Adam at a constant 3e-3 spikes every few dozen steps (gradient norm 0.4 -> 13), and the step a spike lands on
    depends on the last bit of the CPU's vector kernels. A spike on one of the last steps left the saved LLM mid-spike
    (caption loss 1.6 instead of 0.7), and the whole demo in another basin. Decaying to zero ends training calm.
    """
    from transformers import get_cosine_schedule_with_warmup

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, max(1, steps // 10), steps)


def _step(params: list[torch.nn.Parameter], optimizer, scheduler, max_grad_norm: float = 1.0) -> None:
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def _pretrain_text(llm: LlamaForCausalLM, tokenizer, texts: list[str], steps: int, seed: int, batch_size: int = 32,
                   show_progress: bool = True):
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    params = list(llm.parameters())
    optimizer, scheduler = _optimizer(params, 3e-3, steps)
    llm.train()
    for _ in tqdm(range(steps), desc="pre-training the tiny LLM on text", leave=False, disable=not show_progress):
        rows = torch.randint(len(texts), (batch_size,), generator=generator).tolist()
        batch = tokenizer([texts[i] + tokenizer.eos_token for i in rows], padding=True, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        llm(**batch, labels=labels).loss.backward()
        _step(params, optimizer, scheduler)
    llm.eval()


def _pretrain_vision(vision: SiglipVisionModel, image_processor, tokenizer, images: list, texts: list[str],
                     steps: int, seed: int, batch_size: int = 64, show_progress: bool = True):
    """A miniature SigLIP pre-training: pooled image embedding vs mean word embedding, sigmoid pairwise loss."""
    from tqdm.auto import tqdm

    width = vision.config.hidden_size
    words = torch.nn.EmbeddingBag(len(tokenizer), width, mode="mean")
    scale, bias = torch.nn.Parameter(torch.tensor(2.3)), torch.nn.Parameter(torch.tensor(-10.0))  # SigLIP's init
    params = [*vision.parameters(), *words.parameters(), scale, bias]
    optimizer, scheduler = _optimizer(params, 1e-3, steps)
    generator = torch.Generator().manual_seed(seed)
    token_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    vision.train()
    for _ in tqdm(range(steps), desc="pre-training the tiny vision tower (SigLIP loss)", leave=False,
                  disable=not show_progress):
        rows = torch.randint(len(texts), (batch_size,), generator=generator).tolist()
        pixels = image_processor(images=[images[i] for i in rows], return_tensors="pt")["pixel_values"]
        flat = torch.tensor([t for i in rows for t in token_ids[i]])
        offsets = torch.tensor([0, *torch.tensor([len(token_ids[i]) for i in rows]).cumsum(0)[:-1].tolist()])
        image_emb = torch.nn.functional.normalize(vision(pixel_values=pixels).pooler_output, dim=-1)
        text_emb = torch.nn.functional.normalize(words(flat, offsets), dim=-1)
        logits = image_emb @ text_emb.T * scale.exp() + bias  # (B, B)
        # identical captions are positives too
        same = torch.tensor([[texts[i] == texts[j] for j in rows] for i in rows], dtype=torch.float32)
        loss = -torch.nn.functional.logsigmoid((2 * same - 1) * logits).sum() / batch_size
        loss.backward()
        _step(params, optimizer, scheduler)
    vision.eval()
