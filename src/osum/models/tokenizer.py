"""Small BPE tokenizers trained on transcripts, for LLMs built from a config (tests, the tiny recipe)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

# A Qwen-style chat template (ChatML); used when a small tokenizer should exercise the chat layout.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_bpe_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 500, chat: bool = False,
                        whole_tokens: Iterable[str] = ()):
    """Train a byte-level BPE on `texts`, save it as a Hugging Face tokenizer in `out_dir`, and return it.

    `whole_tokens` (e.g. label tags like "<male>") become single tokens, so that a label is one decision
    of the model rather than a run of characters of which only the first carries the choice.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(texts), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>", clean_up_tokenization_spaces=False
    )
    extra = [t for t in dict.fromkeys(whole_tokens) if t]
    if extra:
        tokenizer.add_tokens(extra)
    if chat:
        tokenizer.chat_template = CHATML_TEMPLATE
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    return tokenizer
