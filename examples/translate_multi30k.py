"""German -> English translation on Multi30k with a recurrent encoder-decoder, in the lectures'
two forms, decoded with fastrnn.generate's greedy and beam search and scored with corpus BLEU
(sacrebleu) on test_2016_flickr.

- Encoder: embedding -> bidirectional GRU (or LSTM, --cell) over the source as a PackedSequence.
- --attention none (the lecture's form): the encoder's last states (both directions, through a
  linear "bridge") start the decoder; that same summary is also fed to every decoder step and to
  the output layer (Cho et al. 2014), as the decoder has no other view of the source.
- --attention luong: the decoder runs over the target alone (one recurrent call over the whole
  sentence in training) and each output attends to the encoder's outputs, general score
  ``h_t^T W k_s`` (Luong et al. 2015, global attention, no input feeding).
- --attention bahdanau: additive attention from the previous decoder state, the context fed into
  the step (Bahdanau et al. 2015), so training steps the decoder one token at a time.
Training is teacher forcing (the gold previous word is fed), or with --scheduled-sampling K
Bengio et al.'s scheduled sampling with the inverse-sigmoid schedule k = K
(``fastrnn.generate.scheduled_sampling`` and ``inverse_sigmoid_schedule``). The decoder's state
is ``(rnn state, memory)``, every tensor with the batch on dimension 1 (the encoder's outputs
[S, N, 2H] and the source mask [S, N] included), so fastrnn.generate's beam search reorders it
with its default ``index_select(1, ...)``.

BLEU is sacrebleu's corpus BLEU on the tokenised, lower-cased files as they are
(``tokenize="none"``: the references are already tokenised). tokens/s count target tokens.
Runs with torch.nn's layers or fastrnn.nn's (--impl), from the same initial weights.

    python examples/translate_multi30k.py --impl fastrnn --attention luong
    python examples/translate_multi30k.py --impl fastrnn --attention none --quick
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nlp_data  # noqa: E402  (examples/nlp_data.py)

QUICK = dict(train_limit=2000, eval_limit=50, epochs=2, emsize=48, hidden=48, batch_size=32, lr=5e-3, beam_size=3)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3  # the target vocabulary's specials, in this order


def _generate():
    try:
        from fastrnn import generate
    except ImportError as e:
        sys.exit(f"decoding needs fastrnn.generate (fastrnn installed): {e}")
    return generate


class Seq2Seq(nn.Module):
    def __init__(self, n_src: int, n_tgt: int, emsize: int, hidden: int, cell: str, attention: str, dropout: float):
        super().__init__()
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        H = hidden
        self.cell, self.attention = cell, attention
        self.src_embedding = nn.Embedding(n_src, emsize, padding_idx=PAD_ID)
        self.tgt_embedding = nn.Embedding(n_tgt, emsize, padding_idx=PAD_ID)
        self.encoder = rnn(emsize, H, bidirectional=True)
        self.bridge = nn.Linear(2 * H, H)                       # encoder's last states -> decoder's first
        if attention == "none":
            self.decoder = rnn(emsize + 2 * H, H)                # input: [word; source summary]
            out_in = H + 2 * H
        elif attention == "luong":
            self.decoder = rnn(emsize, H)
            self.attn_keys = nn.Linear(2 * H, H, bias=False)      # W of the general score h^T W k
            self.combine = nn.Linear(H + 2 * H, H)                # attentional state tanh(W_c [ctx; h])
            out_in = H
        elif attention == "bahdanau":
            self.decoder = rnn(emsize + 2 * H, H)                # input: [word; context]
            self.attn_keys = nn.Linear(2 * H, H, bias=False)      # U k_s, computed once per sentence
            self.attn_query = nn.Linear(H, H)                     # W s_{t-1}
            self.attn_v = nn.Linear(H, 1, bias=False)             # v^T tanh(W s + U k)
            out_in = H + 2 * H
        else:
            raise ValueError(f"attention must be 'none', 'luong' or 'bahdanau', got {attention!r}")
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(out_in, n_tgt)

    # ---- encoder -----------------------------------------------------------------------------
    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor):
        """src [S, N], src_lengths [N] -> the decoder's initial state ``(rnn state, memory)``."""
        emb = self.drop(self.src_embedding(src))                                   # [S, N, E]
        out, state = self.encoder(pack_padded_sequence(emb, src_lengths, enforce_sorted=False))
        out, _ = pad_packed_sequence(out, total_length=src.size(0))                # [S, N, 2H]
        h_n = state[0] if self.cell == "lstm" else state                           # [2, N, H]
        last = torch.cat([h_n[0], h_n[1]], dim=1)                                  # [N, 2H]
        h0 = torch.tanh(self.bridge(last)).unsqueeze(0)                            # [1, N, H]
        rnn_state = (h0, torch.zeros_like(h0)) if self.cell == "lstm" else h0
        if self.attention == "none":
            memory = (last.unsqueeze(0),)                                          # [1, N, 2H]
        else:
            memory = (out, self.attn_keys(out), src != PAD_ID)                     # [S, N, 2H], [S, N, H], [S, N]
        return rnn_state, memory

    # ---- attention ---------------------------------------------------------------------------
    def luong_output(self, h: torch.Tensor, memory) -> torch.Tensor:
        """h [T, N, H] decoder outputs -> logits [T, N, V], each step attending to the source."""
        values, keys, mask = memory
        scores = torch.einsum("tnh,snh->nts", h, keys)                             # [N, T, S]
        weights = scores.masked_fill(~mask.t().unsqueeze(1), float("-inf")).softmax(dim=2)
        context = torch.einsum("nts,snd->tnd", weights, values)                    # [T, N, 2H]
        attentional = torch.tanh(self.combine(torch.cat([context, h], dim=2)))     # [T, N, H]
        return self.out(self.drop(attentional))

    def bahdanau_context(self, query: torch.Tensor, memory) -> torch.Tensor:
        """query [N, H] (the previous decoder state) -> context [N, 2H]."""
        values, keys, mask = memory
        energy = self.attn_v(torch.tanh(keys + self.attn_query(query).unsqueeze(0))).squeeze(2)  # [S, N]
        weights = energy.masked_fill(~mask, float("-inf")).softmax(dim=0)
        return (weights.unsqueeze(2) * values).sum(dim=0)

    # ---- decoder -----------------------------------------------------------------------------
    def step(self, tokens: torch.Tensor, state):
        """One decoder step, fastrnn.generate's contract: tokens [N] -> (logits [N, V], state)."""
        rnn_state, memory = state
        emb = self.drop(self.tgt_embedding(tokens)).unsqueeze(0)                   # [1, N, E]
        if self.attention == "none":
            out, rnn_state = self.decoder(torch.cat([emb, memory[0]], dim=2), rnn_state)
            logits = self.out(self.drop(torch.cat([out, memory[0]], dim=2)))[0]
        elif self.attention == "luong":
            out, rnn_state = self.decoder(emb, rnn_state)
            logits = self.luong_output(out, memory)[0]
        else:
            h_prev = rnn_state[0] if self.cell == "lstm" else rnn_state            # [1, N, H]
            context = self.bahdanau_context(h_prev[0], memory)                     # [N, 2H]
            out, rnn_state = self.decoder(torch.cat([emb, context.unsqueeze(0)], dim=2), rnn_state)
            logits = self.out(self.drop(torch.cat([out[0], context], dim=1)))
        return logits, (rnn_state, memory)

    def teacher_forced(self, tgt_in: torch.Tensor, state) -> torch.Tensor:
        """tgt_in [T, N] (bos + gold words) -> logits [T, N, V]: one recurrent call over the whole
        target where the decoder's input does not depend on its own state (none, luong)."""
        if self.attention == "bahdanau":
            return _generate().scheduled_sampling(self.step, state, tgt_in, 1.0)[0]
        rnn_state, memory = state
        emb = self.drop(self.tgt_embedding(tgt_in))                                # [T, N, E]
        if self.attention == "none":
            summary = memory[0].expand(tgt_in.size(0), -1, -1)                     # [T, N, 2H]
            out, _ = self.decoder(torch.cat([emb, summary], dim=2), rnn_state)     # [T, N, H]
            return self.out(self.drop(torch.cat([out, summary], dim=2)))
        out, _ = self.decoder(emb, rnn_state)
        return self.luong_output(out, memory)

    def forward(self, src, src_lengths, tgt_in, ratio: float = 1.0, generator=None):
        """Training logits [T, N, V]; ``ratio`` < 1: scheduled sampling with that teacher-forcing rate."""
        state = self.encode(src, src_lengths)
        if ratio < 1.0:
            return _generate().scheduled_sampling(self.step, state, tgt_in, ratio, generator=generator)[0]
        return self.teacher_forced(tgt_in, state)


def make_batch(pairs, idx):
    """-> src [S, N], src_lengths [N], tgt_in [T, N] (bos + words), tgt_out [T, N] (words + eos)."""
    src, src_lengths = nlp_data.pad([pairs[i][0] for i in idx], PAD_ID)
    tgt_in, _ = nlp_data.pad([[BOS_ID] + pairs[i][1] for i in idx], PAD_ID)
    tgt_out, _ = nlp_data.pad([pairs[i][1] + [EOS_ID] for i in idx], PAD_ID)
    return src, src_lengths, tgt_in, tgt_out


def loss_of(logits, tgt_out, reduction="mean"):
    return nn.functional.cross_entropy(logits.reshape(-1, logits.size(2)), tgt_out.reshape(-1),
                                       ignore_index=PAD_ID, reduction=reduction)


def validation_loss(model, pairs, batch_size: int):
    """Teacher-forced loss per target token, and tokens/s of that pass."""
    model.eval()
    rate, total = nlp_data.Throughput(), 0.0
    with torch.no_grad():
        for idx in nlp_data.batches(len(pairs), batch_size, lengths=[len(s) for s, _ in pairs]):
            src, src_lengths, tgt_in, tgt_out = make_batch(pairs, idx)
            total += loss_of(model(src, src_lengths, tgt_in), tgt_out, "sum").item()
            rate.add(int((tgt_out != PAD_ID).sum()))
    return total / rate.tokens, rate.rate


def translate(model, pairs, tgt_vocab, batch_size: int, beam_size: int = 0, length_penalty: float = 1.0):
    """Greedy (beam_size 0) or beam-search translations of pairs' sources, as token lists, and the
    generated tokens per second."""
    generate = _generate()
    model.eval()
    out: List[Optional[List[str]]] = [None] * len(pairs)
    generated, t0 = 0, time.perf_counter()
    with torch.no_grad():
        for idx in nlp_data.batches(len(pairs), batch_size, lengths=[len(s) for s, _ in pairs]):
            src, src_lengths, _, _ = make_batch(pairs, idx)
            state = model.encode(src, src_lengths)
            max_len = int(src_lengths.max()) * 3 // 2 + 5
            if beam_size:
                g = generate.beam_search(model.step, state, BOS_ID, max_len, EOS_ID, beam_size,
                                         length_penalty=length_penalty)
                tokens, lengths = g.tokens[:, 0], g.lengths[:, 0]
            else:
                g = generate.greedy(model.step, state, BOS_ID, max_len, eos=EOS_ID)
                tokens, lengths = g.tokens, g.lengths
            generated += int(lengths.sum())
            for row, i in enumerate(idx):
                out[i] = tgt_vocab.decode(tokens[row].tolist(), stop=EOS_ID)
    return out, generated / (time.perf_counter() - t0)


def bleu(hypotheses: List[List[str]], pairs_text) -> float:
    try:
        import sacrebleu
    except ImportError:
        sys.exit("BLEU needs sacrebleu: pip install sacrebleu (it is in fastrnn's [test] extra)")
    return sacrebleu.corpus_bleu([" ".join(h) for h in hypotheses], [[" ".join(t) for _, t in pairs_text]],
                                 tokenize="none", force=True).score  # force: the files are tokenised on purpose


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    nlp_data.add_common_args(p, "multi30k")
    p.add_argument("--src", default="de", help="source language suffix of the files")
    p.add_argument("--tgt", default="en", help="target language suffix")
    p.add_argument("--cell", choices=("gru", "lstm"), default="gru")
    p.add_argument("--attention", choices=("none", "luong", "bahdanau"), default="luong")
    p.add_argument("--emsize", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256, help="units of the decoder and of each encoder direction")
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--min-freq", type=int, default=2, help="words seen fewer times in training become <unk>")
    p.add_argument("--scheduled-sampling", type=float, default=0.0, metavar="K",
                   help="scheduled sampling with Bengio et al.'s inverse-sigmoid schedule k=K (0: teacher forcing)")
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--length-penalty", type=float, default=1.0)
    p.add_argument("--train-limit", type=int, default=0, help="use only the first N training pairs (0: all)")
    p.add_argument("--eval-limit", type=int, default=0, help="use only the first N val/test pairs (0: all)")
    return nlp_data.parse_args(p, argv, QUICK)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    nlp_data.set_threads(args.threads)
    torch.manual_seed(args.seed)
    generate = _generate()

    def read(split):
        return nlp_data.read_parallel(os.path.join(args.data, f"{split}.{args.src}"),
                                      os.path.join(args.data, f"{split}.{args.tgt}"))
    train_text, val_text, test_text = read("train"), read("val"), read("test_2016_flickr")
    if args.train_limit:
        train_text = train_text[: args.train_limit]
    if args.eval_limit:
        val_text, test_text = val_text[: args.eval_limit], test_text[: args.eval_limit]
    src_vocab = nlp_data.Vocab.build((s for s, _ in train_text), min_freq=args.min_freq)
    tgt_vocab = nlp_data.Vocab.build((t for _, t in train_text), min_freq=args.min_freq,
                                     specials=(nlp_data.PAD, nlp_data.UNK, nlp_data.BOS, nlp_data.EOS))
    assert [tgt_vocab.index[s] for s in (nlp_data.PAD, nlp_data.UNK, nlp_data.BOS, nlp_data.EOS)] == \
        [PAD_ID, UNK_ID, BOS_ID, EOS_ID]

    def encode(text):
        return [(src_vocab.encode(s), tgt_vocab.encode(t)) for s, t in text]
    train, val, test = encode(train_text), encode(val_text), encode(test_text)
    print(f"Multi30k {args.data} {args.src}->{args.tgt}: train {len(train)}, val {len(val)}, test {len(test)} pairs; "
          f"vocabulary {len(src_vocab)} {args.src}, {len(tgt_vocab)} {args.tgt}")

    model = Seq2Seq(len(src_vocab), len(tgt_vocab), args.emsize, args.hidden, args.cell, args.attention, args.dropout)
    model = nlp_data.use_impl(model, args.impl)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    sampling = torch.Generator().manual_seed(args.seed)
    print(f"model: {args.impl} {args.cell} encoder-decoder, attention {args.attention}, hidden {args.hidden}, "
          f"emsize {args.emsize}; {sum(p.numel() for p in model.parameters())} parameters; "
          f"{torch.get_num_threads()} threads")

    def train_step(idx, step):
        src, src_lengths, tgt_in, tgt_out = make_batch(train, idx)
        ratio = generate.inverse_sigmoid_schedule(step, args.scheduled_sampling) if args.scheduled_sampling else 1.0
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(model(src, src_lengths, tgt_in, ratio, sampling), tgt_out)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        return loss.item(), int((tgt_out != PAD_ID).sum())

    def evaluate_epoch():
        val_loss, eval_rate = validation_loss(model, val, args.batch_size)
        val_bleu = bleu(translate(model, val, tgt_vocab, args.batch_size)[0], val_text)
        return (val_bleu, dict(val_loss=val_loss, val_bleu=val_bleu, eval_tokens_per_s=eval_rate),
                dict(val_loss=val_loss, val_bleu_greedy=val_bleu))

    result = {"impl": args.impl, "cell": args.cell, "attention": args.attention, "losses": [], "epochs": []}
    lengths = [len(s) for s, _ in train]
    best = nlp_data.train_epochs(model, train_step, lengths, args, evaluate_epoch, result)
    greedy_out, greedy_rate = translate(model, test, tgt_vocab, args.batch_size)
    beam_out, beam_rate = translate(model, test, tgt_vocab, args.batch_size, args.beam_size, args.length_penalty)
    test_greedy, test_beam = bleu(greedy_out, test_text), bleu(beam_out, test_text)
    for i in range(min(3, len(test))):
        print(f"  source    {' '.join(test_text[i][0])}\n  reference {' '.join(test_text[i][1])}\n"
              f"  greedy    {' '.join(greedy_out[i])}\n  beam {args.beam_size}    {' '.join(beam_out[i])}")
    share = nlp_data.training_share(model, train_step, lengths, args.batch_size, args.share_batches,
                                    result["epochs"][-1]["step"])
    result.update(val_bleu=best, test_bleu_greedy=test_greedy, test_bleu_beam=test_beam, recurrent_share=share,
                  greedy_tokens_per_s=greedy_rate, beam_tokens_per_s=beam_rate,
                  examples=[dict(source=test_text[i][0], reference=test_text[i][1], greedy=greedy_out[i],
                                 beam=beam_out[i]) for i in range(min(3, len(test)))])
    print(nlp_data.report_line(f"result ({args.impl} {args.cell}, attention {args.attention})", val_bleu=best,
                               test_bleu_greedy=test_greedy, test_bleu_beam=test_beam,
                               train_tokens_per_s=round(result["train_tokens_per_s"]),
                               greedy_tokens_per_s=round(greedy_rate), beam_tokens_per_s=round(beam_rate),
                               recurrent_share=share))
    if args.plot:
        nlp_data.plot_curves(args.plot, {"training loss (per batch)": list(enumerate(result["losses"], 1)),
                                         "validation loss": [(e["step"], e["val_loss"]) for e in result["epochs"]]},
                             "batch", f"Multi30k {args.src}->{args.tgt}, {args.impl} {args.cell}, "
                                      f"attention {args.attention}",
                             secondary={"validation BLEU (greedy)": [(e["step"], e["val_bleu"])
                                                                     for e in result["epochs"]]},
                             secondary_label="BLEU")
    return result


if __name__ == "__main__":
    main()
