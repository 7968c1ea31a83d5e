#!/usr/bin/env python3
"""Small byte-level BPE tokenizers trained with Hugging Face `tokenizers` (the fast default check
of tests/cli/tokenizer.sh) on make_cases.py's corpus, 600 tokens each:
  a: V3.2's shape -- Split pre-tokenizers (Isolated, MergedWithNext, Contiguous), then ByteLevel
     without regex; added tokens;
  b: the other Split behaviors (Removed, MergedWithPrevious inverted), ByteLevel with GPT-2's
     regex, a TemplateProcessing post-processor (BOS and EOS), added tokens with lstrip / rstrip;
  c: regexes with empty matches (x*, a look-ahead) under Isolated, MergedWithPrevious, Contiguous.
usage: train_small.py a|b|c OUT_JSON"""
import sys
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from make_cases import CORPUS

Split = pre_tokenizers.Split
PRE = {
    "a": [Split(Regex(r"\p{N}{1,3}"), "isolated"),
          Split(Regex(r" ?\p{L}+|\s+(?!\S)|\s+|[^\s\p{L}]+"), "merged_with_next"),
          Split(Regex(r"[aeiou]"), "contiguous"),
          pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)],
    "b": [Split(Regex(r"\t"), "removed"),
          Split(Regex(r"[.,!?]"), "merged_with_previous", invert=True),
          pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)],
    "c": [Split(Regex(r"e*"), "isolated"),
          Split(Regex(r"(?=o)|a*"), "merged_with_previous"),
          Split(Regex(r"n?"), "contiguous", invert=True),
          pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)],
}


def main():
    kind = sys.argv[1]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(PRE[kind])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    if kind != "b":
        tok.add_tokens(["<think>", "</think>"])
    else:
        tok.add_special_tokens([AddedToken("<L>", lstrip=True), AddedToken("<R>", rstrip=True)])
        tok.add_tokens([AddedToken("<n>", normalized=True), AddedToken("<n>x", normalized=False)])
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    tok.save(sys.argv[2])


if __name__ == "__main__":
    main()
