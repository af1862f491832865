"""A word-level language model on WikiText-2 that writes: word_language_model.py's model and
training (embedding -> 2-layer LSTM/GRU -> linear decoder, SGD with truncated BPTT), then test
perplexity, then text continued from a prompt with fastrnn.generate's greedy decoding, sampling
(temperature, nucleus top-p) and beam search, each through the same one-step function
``step(tokens [N], state) -> (logits [N, V], state)`` over the model's own layers.

The shared WikiText-2 copy has no training split: it trains on valid.txt and evaluates on test.txt
(word_language_model.load_corpus; a --data DIR with train.txt trains on that). Runs with torch.nn's
layers or fastrnn.nn's (--impl), from the same initial weights for a seed.

    python examples/lm_wikitext2.py --impl fastrnn --epochs 6
    python examples/lm_wikitext2.py --impl torch --quick
"""
from __future__ import annotations

import math
import os
import sys
import time
import types
from typing import Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nlp_data  # noqa: E402  (examples/nlp_data.py)
import word_language_model as wlm  # noqa: E402

QUICK = dict(epochs=1, max_batches=40, emsize=48, nhid=48, batch_size=16, bptt=20, max_eval_tokens=20000,
             generate_len=12, lr=20.0)


def lm_step(model):
    """fastrnn.generate's step over ``model`` (a word_language_model.LanguageModel in eval mode):
    tokens [N] -> (logits [N, V], state), state the RNN's (h [L, N, H] or (h, c))."""
    def step(tokens, state):
        out, state = model.rnn(model.encoder(tokens).unsqueeze(0), state)   # [1, N, H]
        return model.decoder(out[0]), state
    return step


def write(model, vocab, prompt: str, args) -> dict:
    """Continues ``prompt`` with greedy decoding, sampling and beam search; returns {method: text}
    and the greedy decoder's tokens/s."""
    from fastrnn import generate
    model.eval()
    ids = [vocab.index.get(w, 0) for w in ["<eos>"] + prompt.split()]
    step, eos = lm_step(model), vocab.index["<eos>"]
    with torch.no_grad():
        # The prompt but its last word goes through the model in one call; the last word is the first input.
        _, state = model(torch.tensor(ids[:-1]).unsqueeze(1), model.init_hidden(1))
        bos = torch.tensor(ids[-1:])
        t0 = time.perf_counter()
        runs = {"greedy": generate.greedy(step, state, bos, args.generate_len)}
        greedy_rate = args.generate_len / (time.perf_counter() - t0)
        runs[f"sample (temperature {args.temperature}, top-p {args.top_p})"] = generate.sample(
            step, state, bos, args.generate_len, temperature=args.temperature, top_p=args.top_p,
            generator=torch.Generator().manual_seed(args.seed))
        # min_len: the model's most probable next word is often <eos>, which would end the beam at once.
        beam = generate.beam_search(step, state, bos, args.generate_len, eos, args.beam_size,
                                    min_len=args.generate_len // 2)
    texts = {name: " ".join(vocab.words[int(t)] for t in g.tokens[0]) for name, g in runs.items()}
    texts[f"beam {args.beam_size}"] = " ".join(vocab.decode(beam.tokens[0, 0].tolist(), stop=eos))
    return texts, greedy_rate


def parse_args(argv):
    p = wlm.build_parser()
    p.description = __doc__.split("\n\n")[0]
    p.set_defaults(data=nlp_data.default_data("wikitext-2"), log_interval=0, epochs=6, lr=20.0)
    p.add_argument("--quick", action="store_true", help="a run of seconds on a slice of the data, small model")
    p.add_argument("--plot", default=None, metavar="PATH", help="write the learning curve to this PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--share-batches", type=int, default=5,
                   help="training batches replayed after training to measure the recurrent layers' share")
    p.add_argument("--prompt", default="The game", help="text to continue (words not in the vocabulary: <unk>)")
    p.add_argument("--generate-len", type=int, default=30, help="words to generate")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--beam-size", type=int, default=5)
    args = nlp_data.parse_args(p, argv, QUICK)
    args.progress = not args.no_progress
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    losses = []
    model, vocab, result, splits = wlm.train_and_evaluate(args, losses)
    texts, greedy_rate = write(model, vocab, args.prompt, args)
    for name, text in texts.items():
        print(f"  {name:40s} {args.prompt} | {text}")
    share = nlp_data.RecurrentShare(model)
    share_args = types.SimpleNamespace(**{**vars(args), "max_batches": args.share_batches, "progress": False,
                                          "log_interval": 0})
    with share.record():
        wlm.train_epoch(model, splits["train"], share_args, 0.0, 0)   # lr 0: the measured batches change nothing
    result.update(losses=losses, generated=texts, greedy_tokens_per_s=greedy_rate, recurrent_share=share.share)
    print(nlp_data.report_line(f"result ({args.impl} {args.cell})", test_ppl=result["test_ppl"],
                               train_tokens_per_s=round(result["train_tokens_per_s"]),
                               test_tokens_per_s=round(result["test_tokens_per_s"]),
                               greedy_tokens_per_s=round(greedy_rate), recurrent_share=share.share))
    if args.plot:
        nlp_data.plot_curves(args.plot, {"training loss (per batch)": list(enumerate(losses, 1))}, "batch",
                             f"WikiText-2 LM, {args.impl} {args.cell}",
                             secondary={"test perplexity (end)": [(len(losses), result["test_ppl"])]},
                             secondary_label="perplexity")
    return result


if __name__ == "__main__":
    main()
