#!/usr/bin/env python3
"""Expected ids from Hugging Face `tokenizers` for tests/test_tokenizer.c (docs/text.md).
usage: make_cases.py TOKENIZER_JSON OUT [--random N] [--train OUT_JSON]
Each line of OUT: hex(text) TAB ids (comma-separated) TAB hex(decode(ids))."""
import random, sys, unicodedata
from tokenizers import Tokenizer

CORPUS = [
    "Hello, world! This is a test.", "The quick brown fox jumps over the lazy dog's back.",
    "I'm we'll they've CAPS lowercase MiXeD", "你好，世界！今天天气很好。深度求索的模型。",
    "日本語のテキスト、ひらがなとカタカナ。東京タワー", "한국어 텍스트입니다. 안녕하세요!",
    "def f(x):\n    return x ** 2  # square\n\tif x<0: pass\n", "int main(void) { return a->b[3] != 0 && c; }",
    "   leading and trailing   ", "a\n\nb\r\n\r\nc\n\n\n  \n", "tabs\t\tand\u00a0nbsp\u3000ideographic",
    "emoji 😀👍🏽 👨‍👩‍👧 🇫🇷", "combining e\u0301 a\u0308 n\u0303 \u0915\u093f", "Ünïcödé façade naïve",
    "", " ", "\n", "  ", "x", "mixed中文and English混合123abc", "<think>reason</think>answer",
    "<｜User｜>hi<｜Assistant｜>", "a<｜begin▁of▁sentence｜>b<｜end▁of▁sentence｜>",
    "price: $1,234.56 (approx.) -- 50% off!!!", "email@example.com https://x.org/a?b=c&d=e",
    "Ελληνικά русский العربية עברית हिन्दी ไทย",
]
for k in range(1, 25):
    CORPUS.append("".join(str((i * 7 + k) % 10) for i in range(k)))
    CORPUS.append("n=" + "9" * k + " and " + "1" * k + ".")
for k in (1, 2, 3, 5, 8, 17):
    CORPUS += [" " * k + "w", "\n" * k, "w" + " " * k, "\t" * k + "x", " \n" * k]


def random_text(rng):
    """Up to 40 characters from scripts, symbols and emoji; characters unassigned in this Python's
    Unicode are left out, and the pools hold no character assigned after Unicode 14.0 (Debian 12's
    PCRE2 10.42): tokenizers' Oniguruma knows Unicode 16, so \\p{S} and the other classes differ
    on characters assigned since (docs/text.md, "Unicode versions")."""
    pools = [(0x20, 0x7e), (0xa0, 0x24f), (0x300, 0x36f), (0x370, 0x3ff), (0x400, 0x4ff), (0x590, 0x6ff),
             (0x900, 0x97f), (0xe00, 0xe7f), (0x2000, 0x206f), (0x3000, 0x30ff), (0x4e00, 0x9fff),
             (0xac00, 0xd7a3), (0xff00, 0xffef), (0x1f300, 0x1f64f), (0x1f680, 0x1f6d2), (0x1f900, 0x1f9ff),
             (0x9, 0xd)]
    out = []
    for _ in range(rng.randint(0, 40)):
        lo, hi = rng.choice(pools)
        c = chr(rng.randint(lo, hi))
        if unicodedata.category(c) != "Cn":
            out.append(c)
    return "".join(out)


def main():
    tok = Tokenizer.from_file(sys.argv[1])
    texts = list(CORPUS)
    specials = [t.content for t in tok.get_added_tokens_decoder().values()]
    texts += ["x " + s + " y" for s in specials]
    args = sys.argv[3:]
    n = int(args[args.index("--random") + 1]) if "--random" in args else 0
    rng = random.Random(24)
    texts += [random_text(rng) for _ in range(n)]
    with open(sys.argv[2], "w") as f:
        for t in texts:
            ids = tok.encode(t, add_special_tokens=True).ids
            dec = tok.decode(ids, skip_special_tokens=False)
            f.write("%s\t%s\t%s\n" % (t.encode().hex(), ",".join(map(str, ids)), dec.encode().hex()))


if __name__ == "__main__":
    main()
