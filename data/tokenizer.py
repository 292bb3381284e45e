"""
Train the small default model's tokenizer: byte-level BPE with every digit its
own token, saved as a Hugging Face tokenizer.json.

    python -m data.tokenizer --data data/lila --out data/tokenizer.json --vocab-size 1024

The training text is the train split written exactly as the model will see it,
format_qa(question, answer) ("Question: ...\\nAnswer: ...\\n\\n"), so "Question:",
"Answer:" and frequent operators become single tokens.

Pieces (the `tokenizers` library, as GPT-2 and phi-2 tokenizers are built):
  pre-tokenizer  Digits(individual_digits=True), then GPT-2's ByteLevel regex
                 split: numbers are spelled digit by digit (as in LLaMA), which
                 makes place value learnable for a small model
  model          BPE over the 256 byte symbols, merges learned up to vocab_size
  decoder        ByteLevel, so decode(encode(text).ids) == text for any text
                 (pass skip_special_tokens=False to keep "<|endoftext|>")
  special token  "<|endoftext|>" with id 0, as phi-2's end-of-text marker

Training is deterministic: the same texts give the same file.
Left out: normalisers (text is kept byte for byte) and a post-processor (no
BOS/EOS is added; callers append "<|endoftext|>" where they want it).
"""
import argparse
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from data.lila import DEFAULT_DATA, load
from data.prompts import EOT, format_qa


def train_tokenizer(texts, vocab_size=1024):
    """A digit-split byte-level BPE trained on texts (an iterable of strings)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def main():
    p = argparse.ArgumentParser(description="Train the digit-split byte-level BPE tokenizer "
                                            "on the train split of LiLA task files.")
    p.add_argument("--data", nargs="+", default=[DEFAULT_DATA],
                   help=f"task files or folders (a folder gives its *.json files; default {DEFAULT_DATA})")
    p.add_argument("--out", default="data/tokenizer.json", help="where to write tokenizer.json")
    p.add_argument("--vocab-size", type=int, default=1024,
                   help="tokens in all: 256 bytes, <|endoftext|> and the learned merges")
    args = p.parse_args()

    train = load(args.data, split="train")
    print(f"training a {args.vocab_size}-token BPE on {len(train)} train questions from {args.data}", file=sys.stderr)
    tok = train_tokenizer((format_qa(e.question, e.answers[0]) for e in train), args.vocab_size)
    tok.save(args.out)
    sample = format_qa(train[0].question, train[0].answers[0])
    print(f"wrote {args.out}: {tok.get_vocab_size()} tokens; "
          f"{len(sample)} chars of the first question -> {len(tok.encode(sample).ids)} tokens", file=sys.stderr)


if __name__ == "__main__":
    main()
