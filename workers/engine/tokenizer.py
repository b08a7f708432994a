"""The run's own byte-level BPE tokenizer, with the chat tokens and template inference relies on."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
SYSTEM_TOKEN = "<|system|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
END_TOKEN = "<|end|>"
TOOL_TOKEN = "<|tool|>"
CHAT_TOKENS = (SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, END_TOKEN, TOOL_TOKEN)
# EOS first so that it gets id 0 in every tokenizer the engine trains.
SPECIAL_TOKENS = (EOS_TOKEN, *CHAT_TOKENS)

# Each turn is "<|role|>\n{content}<|end|>\n" (role: system, user, assistant or tool).
# A generation prompt opens an assistant turn, and
# generation stops at <|end|> (the trainer lists it among the eos ids of generation_config).
# Unknown roles fail loudly rather than being rendered as text the model never saw.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{ raise_exception('unsupported chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)


def train_tokenizer(
    texts: Iterable[str], *, vocab_size: int, model_max_length: int
) -> PreTrainedTokenizerFast:
    """Fit a GPT-2-style byte-level BPE on the run's texts.

    Byte-level means any input encodes (no unknown token is ever produced), so a small corpus
    still yields a tokenizer that handles whatever users type at inference time. The result
    depends only on the texts and vocab_size: the same corpus gives the same tokenizer.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        # A pair seen once is noise, not a word piece worth a vocabulary slot.
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(backend, model_max_length=model_max_length)


def wrap_tokenizer(backend: Tokenizer, *, model_max_length: int) -> PreTrainedTokenizerFast:
    """Give a raw `tokenizers` object the transformers interface, special tokens and template."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        # transformers 5 renames this to extra_special_tokens and accepts the old name.
        additional_special_tokens=list(CHAT_TOKENS),
        model_max_length=model_max_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def load_tokenizer(directory: Path) -> PreTrainedTokenizerFast:
    """The tokenizer a checkpoint carries, so a resumed run keeps the ids its weights learned."""
    tokenizer: PreTrainedTokenizerFast = PreTrainedTokenizerFast.from_pretrained(str(directory))
    return tokenizer


def fast_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerFast:
    """The tokenizer as a fast (Rust-backed) one, for code that encodes through its backend.

    Scratch tokenizers are always fast; a pretrained base may ship only a slow one.
    """
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ValueError(
            f"a fast tokenizer (tokenizer.json) is needed; {type(tokenizer).__name__} is a slow one"
        )
    return tokenizer


def generation_eos_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end a generation: end of text, and end of a chat turn."""
    ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_TOKEN)]
    return [i for i in dict.fromkeys(ids) if isinstance(i, int)]
