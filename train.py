"""
Training: pretrain the small default model (--base) on LiLA math questions.

    python train.py --base --out runs/base                     # phi-tiny, CPU recipe
    python train.py --base --out runs/base --resume            # continue a killed run

Chapters:
  1. Episodes     the training stream: rows of question/answer pairs of one
                  submodule, packed as few-shot prompts are, so that in-context
                  learning emerges; deterministic per step (exact resume)
  2. the loop     AdamW, linear warmup + cosine decay, gradient clipping,
                  periodic dev loss and dev accuracy, keeping the best model
  3. checkpoints  atomic (temp file + rename) training state for --resume, and
                  an HF-layout directory of the best model (model.py's save)

References: nanoGPT's train.py (the loop, the schedule, decay groups).
Left out: gradient accumulation, mixed precision on CPU (bf16 autocast is used
on CUDA only), and distributed pretraining.
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm import tqdm

import model as M
from data.lila import load as load_examples
from data.prompts import format_qa
from eval import evaluate, mean_accuracy, select

# ---------------------------------------------------------------------------
# 1. Episodes
# ---------------------------------------------------------------------------


class Episodes:
    """Rows of T+1 tokens: <|endoftext|>, then solved questions of one submodule,
    "Question: q\\nAnswer: a\\n\\n" after another, cut at T+1 tokens.

    Row r of step s is drawn from a generator seeded by (seed, s, r), so any
    step's batch can be rebuilt after a restart. loss="all" trains on every
    token; loss="answer" only on the answer tokens " a\\n\\n" (the targets of
    all other positions are -100, ignored by cross_entropy)."""

    def __init__(self, tok, examples, T, seed, loss="all"):
        self.T, self.seed, self.loss = T, seed, loss
        self.eot = tok.token_to_id(M.EOT)
        groups = {}
        for e in examples:
            groups.setdefault(e.submodule, []).append(e)
        self.groups = []   # per submodule: list of (question ids, answer ids)
        for name in sorted(groups):
            qs = tok.encode_batch([format_qa(e.question) for e in groups[name]])
            ans = tok.encode_batch([format_qa("", e.answers[0]).split("Answer:", 1)[1]
                                    for e in groups[name]])
            self.groups.append([(np.array(q.ids), np.array(a.ids)) for q, a in zip(qs, ans)])
        if not self.groups:
            raise ValueError("no training examples")

    def row(self, rng):
        pairs = self.groups[rng.integers(len(self.groups))]
        ids, train = [np.array([self.eot])], [np.array([False])]
        n = 1
        while n < self.T + 1:
            q, a = pairs[rng.integers(len(pairs))]
            ids += [q, a]
            train += [np.full(len(q), self.loss == "all"), np.full(len(a), True)]
            n += len(q) + len(a)
        return np.concatenate(ids)[:self.T + 1], np.concatenate(train)[:self.T + 1]

    def batch(self, step, B, device="cpu"):
        """x (B, T) inputs and y (B, T) targets, -100 where no loss is taken."""
        rows = [self.row(np.random.default_rng([self.seed, step, r])) for r in range(B)]
        ids = torch.from_numpy(np.stack([r[0] for r in rows])).long()        # (B, T+1)
        train = torch.from_numpy(np.stack([r[1] for r in rows]))             # (B, T+1)
        x, y = ids[:, :-1], ids[:, 1:].masked_fill(~train[:, 1:], -100)      # (B, T) each
        return x.to(device), y.to(device)


# ---------------------------------------------------------------------------
# 2. The loop
# ---------------------------------------------------------------------------


def lr_at(step, lr, warmup, total, floor=0.1):
    """Linear warmup to lr, then cosine decay to floor*lr at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, lr, weight_decay, device):
    """AdamW; matrices decay, biases/LayerNorms/embeddings don't (nanoGPT's split,
    less the embeddings, which are small here and look up rare digits)."""
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embed" not in n)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=(device == "cuda"))


def lm_loss(model, x, y):
    logits = model(x)                                                   # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100)


@torch.no_grad()
def dev_loss(model, episodes, batches, B, device, autocast):
    model.eval()
    losses = []
    for i in range(batches):
        x, y = episodes.batch(i, B, device)
        with autocast():
            losses.append(lm_loss(model, x, y).item())
    model.train()
    return sum(losses) / len(losses)


# ---------------------------------------------------------------------------
# 3. Checkpoints
# ---------------------------------------------------------------------------


def atomic_save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def pretrain(args):
    torch.manual_seed(args.seed)
    device = args.device
    os.makedirs(args.out, exist_ok=True)
    tok = Tokenizer.from_file(args.tokenizer)
    train = load_examples(args.data, split="train")
    dev = load_examples(args.data, split="dev")
    vocab = -(-tok.get_vocab_size() // 64) * 64          # round up: friendlier matmul shapes
    cfg = M.PhiConfig(vocab_size=vocab, hidden_size=args.n_embd, intermediate_size=4 * args.n_embd,
                      num_hidden_layers=args.n_layer, num_attention_heads=args.n_head,
                      partial_rotary_factor=args.rotary, max_position_embeddings=args.max_pos,
                      bos_token_id=tok.token_to_id(M.EOT), eos_token_id=tok.token_to_id(M.EOT))
    model = M.PhiForCausalLM(cfg).to(device)
    print(f"phi-tiny: {model.num_params() / 1e6:.2f}M parameters, {cfg.num_hidden_layers} layers, "
          f"width {cfg.hidden_size}, {cfg.num_attention_heads} heads of {cfg.head_dim}")
    episodes = Episodes(tok, train, args.seq_len, args.seed, args.loss)
    dev_episodes = Episodes(tok, dev, args.seq_len, args.seed + 1, args.loss)
    dev_questions = select(dev, args.eval_questions // 8, args.seed)
    print(f"{len(train)} train / {len(dev)} dev questions in {len(episodes.groups)} submodules; "
          f"{args.steps} steps of {args.batch_size} x {args.seq_len} tokens")
    opt = make_optimizer(model, args.lr, args.weight_decay, device)
    state_path = os.path.join(args.out, "train_state.pt")
    step, best, log = 0, -1.0, []
    if args.resume and os.path.exists(state_path):
        state = torch.load(state_path, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, best, log = state["step"], state["best"], state["log"]
        print(f"resumed from {state_path} at step {step} (best dev accuracy {best:.3f})")
    elif args.resume:
        print(f"--resume: no {state_path} yet, starting from scratch")
    fwd = torch.compile(model) if args.compile else model
    autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16, enabled=(device == "cuda"))

    def checkpoint(step):
        nonlocal best
        dl = dev_loss(fwd, dev_episodes, args.eval_batches, args.batch_size, device, autocast)
        model.eval()
        with autocast():
            acc = mean_accuracy(evaluate(model, tok, dev_questions, train, shots=4,
                                         batch_size=64, desc="dev accuracy"))
        model.train()
        log.append({"step": step, "dev_loss": dl, "dev_accuracy": acc, "time": time.time() - t0})
        if acc > best:
            best = acc
            M.save(model, tok, args.out, dtype=M.DTYPES[args.save_dtype])
        atomic_save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                     "best": best, "log": log, "args": vars(args)}, state_path)
        with open(os.path.join(args.out, "log.json"), "w") as f:
            json.dump(log, f, indent=1)
        tqdm.write(f"step {step}: dev loss {dl:.4f}, dev accuracy {acc:.3f} (best {best:.3f})")

    t0 = time.time() - (log[-1]["time"] if log else 0)
    model.train()
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps, desc="pretrain")
    for step in bar:
        lr = lr_at(step, args.lr, args.warmup, args.steps)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = episodes.batch(step, args.batch_size, device)
        with autocast():
            loss = lm_loss(fwd, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 10 == 0:
            log.append({"step": step, "loss": loss.item(), "lr": lr, "time": time.time() - t0})
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}")
        done = step + 1
        if done % args.eval_every == 0 or done == args.steps or done == args.stop_at:
            checkpoint(done)
        if done == args.stop_at:
            print(f"stopping at step {done} as asked (--stop-at); continue with --resume")
            break
    return model


def main():
    p = argparse.ArgumentParser(description="Pretrain phi-tiny (--base).")
    p.add_argument("--base", action="store_true", help="pretrain a phi-architecture model from scratch")
    p.add_argument("--data", default="data/lila", help="LiLA task file(s) or directory")
    p.add_argument("--tokenizer", default="data/tokenizer.json", help="tokenizer.json (make data writes it)")
    p.add_argument("--out", default="runs/base", help="output directory (HF layout + train_state.pt)")
    p.add_argument("--n-layer", type=int, default=8, help="transformer blocks")
    p.add_argument("--n-embd", type=int, default=320, help="hidden size (MLP is 4x)")
    p.add_argument("--n-head", type=int, default=4, help="attention heads (head size = n-embd / n-head)")
    p.add_argument("--rotary", type=float, default=0.4, help="partial_rotary_factor, as phi-2")
    p.add_argument("--max-pos", type=int, default=1024, help="max_position_embeddings")
    p.add_argument("--seq-len", type=int, default=512, help="training sequence length")
    p.add_argument("--loss", default="all", choices=["all", "answer"], help="tokens that carry the loss")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=200, help="linear warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on matrices")
    p.add_argument("--eval-every", type=int, default=500, help="steps between dev evaluations/checkpoints")
    p.add_argument("--eval-batches", type=int, default=4, help="batches for the dev loss")
    p.add_argument("--eval-questions", type=int, default=200, help="dev questions for the dev accuracy")
    p.add_argument("--save-dtype", default="float16", choices=sorted(M.DTYPES), help="dtype of model.safetensors")
    p.add_argument("--seed", type=int, default=1234, help="random seed (init and data order)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--stop-at", type=int, default=None, help="checkpoint and stop after this step "
                   "(split a long run across sessions; the schedule still follows --steps)")
    args = p.parse_args()
    if not args.base:
        p.error("choose a mode: --base")
    pretrain(args)


if __name__ == "__main__":
    main()
