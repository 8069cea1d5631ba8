"""Tiny stand-ins for real backbones: a SigLIP tower, a Llama decoder and a word-level tokenizer.

They are written to folders exactly like Hub checkpoints, so every script runs offline through the same
`from_pretrained` paths that real checkpoints use (`--tiny_backbones` in the examples, and the tests).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def build_word_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the words and punctuation of `texts` (lower-cased), with Llama-style BOS."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    words = sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]", text.lower())})
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS.values(), *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def write_tiny_backbones(
    folder: str | Path,
    texts: Iterable[str],
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 64,
    num_layers: int = 4,
    seed: int = 0,
    text_pretrain_steps: int = 0,
) -> tuple[str, str]:
    """Write `folder/vision` (SiglipVisionModel + image processor) and `folder/text` (LlamaForCausalLM +
    tokenizer); returns their paths. Deterministic for a given seed.

    HIVE starts from a pretrained LLM; `text_pretrain_steps` > 0 first trains the tiny LLM on `texts` alone (no
    images), so that the demo's stage 1 has a language model worth connecting to, as in the paper.
    """
    folder = Path(folder)
    texts = list(texts)
    tokenizer = build_word_tokenizer(texts)
    torch.manual_seed(seed)
    vision = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=4, image_size=image_size, patch_size=patch_size,
    ))
    vision.save_pretrained(folder / "vision")
    SiglipImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(folder / "vision")
    llm = LlamaForCausalLM(LlamaConfig(
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    ))
    if text_pretrain_steps > 0:
        _pretrain_text(llm, tokenizer, texts, text_pretrain_steps, seed)
    llm.save_pretrained(folder / "text")
    tokenizer.save_pretrained(folder / "text")
    return str(folder / "vision"), str(folder / "text")


def _pretrain_text(llm: LlamaForCausalLM, tokenizer, texts: list[str], steps: int, seed: int, batch_size: int = 32):
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(llm.parameters(), lr=3e-3, weight_decay=0.0)
    llm.train()
    for _ in tqdm(range(steps), desc="pre-training the tiny LLM on text", leave=False):
        rows = torch.randint(len(texts), (batch_size,), generator=generator).tolist()
        batch = tokenizer([texts[i] + tokenizer.eos_token for i in rows], padding=True, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = llm(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    llm.eval()
