"""Tokenizers for the text encoders we train ourselves, built from our own captions with `tokenizers` (no download).

Two kinds:
- "wordpiece" (BERT, Devlin et al. 2019): `[CLS] words [SEP]`, continuation pieces prefixed with `##`.
- "bpe" (CLIP, Radford et al. 2021): `[BOS] words [EOS]`, byte-pair merges with an end-of-word suffix `</w>`.
Both lower-case (NFD, accents stripped) and split on whitespace and punctuation, pad with [PAD] (id 0) and map
what they cannot spell to [UNK] (id 1). The result is a transformers `PreTrainedTokenizerFast`; its
`save_pretrained(folder)` writes tokenizer.json + tokenizer_config.json, read back by `AutoTokenizer.from_pretrained`.

An *unknown word* (see `unknown_words`) is a word of the prompt -- the normalised (lower-cased) text split on
whitespace and punctuation by the tokenizer's own pre-tokenizer, punctuation-only pieces left out -- that the
tokenizer does not encode as exactly one vocabulary token other than [UNK]. With our tiny caption vocabulary an
unseen word such as "zebra" is split into pieces or becomes [UNK], so it is reported; every caption word is a
whole token. The definition works for any fast tokenizer, including a pretrained CLIP's.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from components.validation import MAX_TOKENS, MAX_VOCAB, require_int

KINDS = ("wordpiece", "bpe")
PAD, UNK = "[PAD]", "[UNK]"
SPECIALS = {"wordpiece": ("[CLS]", "[SEP]"), "bpe": ("[BOS]", "[EOS]")}  # (start, end) of a sequence
END_OF_WORD = "</w>"

# Every word a caption of the shapes dataset uses ("a small yellow triangle in the top left on a black
# background"): the texts a text conditioner's tokenizer is built from when none are given.
CAPTION_VOCABULARY = (
    "a", "small", "large", "red", "orange", "yellow", "green", "blue", "purple", "white", "black",
    "circle", "square", "triangle", "in", "the", "top", "bottom", "left", "right", "center", "on", "background",
)  # fmt: skip


def build_tokenizer(
    texts: Iterable[str] | None = None, *, kind: str = "wordpiece", vocab_size: int = 1000, max_length: int = 32
) -> PreTrainedTokenizerFast:
    """Train a `kind` tokenizer on `texts` (default: CAPTION_VOCABULARY); `max_length` is its model_max_length."""
    if kind not in KINDS:
        raise ValueError(f"tokenizer kind must be one of {KINDS}, got {kind!r}")
    corpus = check_corpus(CAPTION_VOCABULARY if texts is None else texts)
    start, end = SPECIALS[kind]
    specials = [PAD, UNK, start, end]
    require_int("vocab_size", vocab_size, minimum=64, maximum=MAX_VOCAB, why="the alphabet alone takes ~40 entries")
    require_int("max_length", max_length, minimum=3, maximum=MAX_TOKENS, why="start, one word, end; CLIP's is 77")
    backend = backend_tokenizer(kind)
    backend.train_from_iterator(corpus, trainer(kind, vocab_size, specials))
    backend.post_processor = processors.TemplateProcessing(
        single=f"{start} $A {end}", special_tokens=[(start, specials.index(start)), (end, specials.index(end))]
    )
    names = {"cls_token": start, "sep_token": end} if kind == "wordpiece" else {"bos_token": start, "eos_token": end}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, unk_token=UNK, model_max_length=max_length, **names
    )


def check_corpus(texts: Iterable[str]) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be an iterable of strings (captions), got {type(texts).__name__}")
    corpus = list(texts)
    if not corpus or not all(isinstance(t, str) for t in corpus):
        raise ValueError("texts must be a non-empty iterable of strings (captions) to build the vocabulary from")
    return corpus


def backend_tokenizer(kind: str) -> Tokenizer:
    """Lower-casing, whitespace + punctuation splitting, and the model of `kind`."""
    if kind == "wordpiece":
        backend = Tokenizer(models.WordPiece(unk_token=UNK))
        backend.decoder = decoders.WordPiece()
    else:
        backend = Tokenizer(models.BPE(unk_token=UNK, end_of_word_suffix=END_OF_WORD))
        backend.decoder = decoders.BPEDecoder(suffix=END_OF_WORD)
    backend.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # whitespace, then every punctuation mark alone
    return backend


def trainer(kind: str, vocab_size: int, specials: list[str]) -> trainers.Trainer:
    alphabet = list(string.ascii_lowercase + string.digits)  # so most unseen words split into pieces
    if kind == "wordpiece":
        return trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
        )
    return trainers.BpeTrainer(
        show_progress=False,
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=alphabet,
        end_of_word_suffix=END_OF_WORD,
    )


def words(tokenizer: PreTrainedTokenizerBase, text: str) -> list[str]:
    """The words of `text` as the tokenizer sees them: normalised, pre-tokenised, punctuation-only pieces dropped."""
    backend = tokenizer.backend_tokenizer
    normalised = backend.normalizer.normalize_str(text) if backend.normalizer is not None else text
    pieces = backend.pre_tokenizer.pre_tokenize_str(normalised) if backend.pre_tokenizer is not None else []
    return [piece for piece, _ in pieces if any(c.isalnum() for c in piece)]


def is_known(tokenizer: PreTrainedTokenizerBase, word: str) -> bool:
    """A word is known when the tokenizer's model encodes it as exactly one token, and that token is not [UNK]."""
    tokens = tokenizer.backend_tokenizer.model.tokenize(word)
    return len(tokens) == 1 and tokens[0].id != tokenizer.unk_token_id


def unknown_words(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[str]]:
    """Per text, its unknown words (module docstring) in order of first appearance, each once."""
    return [list(dict.fromkeys(w for w in words(tokenizer, text) if not is_known(tokenizer, w))) for text in texts]


def token_counts(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[int]:
    """Tokens per text including the special start/end tokens, before any truncation."""
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
