"""A checkpoint as an evaluated language model: log-likelihoods of continuations, rolling log-likelihoods of
long texts, greedy generation with stop strings.

Tokenization follows lm-evaluation-harness's HF model exactly, so the two score the same tokens:
- a string is encoded with BOS first (lm-eval's HF model with `add_bos_token=True`: ilm's tokenizers add
  none by themselves), unless the string already starts with the BOS text;
- a (context, continuation) pair: trailing spaces of the context move to the continuation, the whole string
  and the context are encoded, and the continuation is the whole's tokens past the context's count;
- an empty context is the single BOS token;
- an input longer than the window keeps its last `max_length + 1` tokens (the last one is only predicted);
- a long text is cut into disjoint windows of `max_length` predicted tokens, the first conditioned on BOS
  and each later one on the tokens just before it (lm-eval's `loglikelihood_rolling`, context_len 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F


def rolling_windows(tokens: list[int], prefix: int, max_len: int) -> list[tuple[list[int], list[int]]]:
    """(context, predicted) token pairs that cover `tokens` once each: every window's input is at most
    `max_len` tokens, the first starts from `prefix`, later ones carry as much preceding text as fits."""
    out: list[tuple[list[int], list[int]]] = []
    if not tokens:
        return out
    first = min(max_len, len(tokens))
    out.append(([prefix], tokens[:first]))
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, max_len)
        end = done + n
        # the input is tokens[end - max_len - 1 : end - 1]; the context is its part before the predictions
        start = max(end - max_len - 1, 0)
        out.append((tokens[start:done], tokens[done:end]))
        done = end
    return out


_SHARE = 8


def _hosts(inputs: set[tuple[int, ...]], share_max: int | None = None) -> dict[tuple[int, ...], tuple[int, ...]]:
    """Each input -> the input whose forward pass serves it: itself, or a longer one it is a prefix of (by
    at most `_SHARE` tokens). `share_max`: hosts longer than this serve only themselves (under dynamic NTK
    the RoPE base depends on the whole length past `max_position_embeddings`, so a longer row's outputs at a
    prefix are not what the prefix alone would get)."""
    host: dict[tuple[int, ...], tuple[int, ...]] = {}
    for x in sorted(inputs, key=len, reverse=True):
        if x in host:
            continue
        host[x] = x
        if share_max is not None and len(x) > share_max:
            continue
        for k in range(1, min(_SHARE, len(x) - 1) + 1):
            p = x[:-k]
            if p in inputs and p not in host:
                host[p] = x
    return host


class EvalModel:
    """An ilm checkpoint plus its tokenizer, answering the three kinds of request of an evaluation."""

    def __init__(self, checkpoint: str | Path, device: str | None = None, dtype: torch.dtype = torch.float32,
                 batch_size: int = 8, max_length: int | None = None, tokenizer: str | Path | None = None,
                 progress: bool = False):
        from ilm.model.hf import load_checkpoint
        from ilm.tokenizer import load_tokenizer

        checkpoint = Path(checkpoint)
        if not checkpoint.is_dir():
            raise FileNotFoundError(2, "No such file or directory", str(checkpoint))
        tokenizer = Path(tokenizer) if tokenizer is not None else checkpoint
        if not (tokenizer / "tokenizer.json").is_file() and not (tokenizer / "tokenizer.model").is_file():
            raise ValueError(f"{tokenizer}: no tokenizer (tokenizer.json) in the checkpoint directory; copy the "
                             "tokenizer files beside the weights (`ilm model convert` and the demo's Llama copy do)")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_checkpoint(checkpoint, device=self.device, dtype=dtype).eval()
        self.tokenizer = load_tokenizer(tokenizer)
        self.bos = int(self.tokenizer.bos_id)
        self.bos_text = self.tokenizer.decode([self.bos], skip_special=False)
        self.eos = int(self.tokenizer.eos_id)
        self.batch_size = max(1, batch_size)
        self.max_length = max_length or self.model.config.max_position_embeddings
        self.forwards = 0  # forward passes run (shared contexts are scored once)
        self.progress = progress

    # -- tokenization ----------------------------------------------------------------------------------
    def encode(self, text: str, special: bool | None = None) -> list[int]:
        bos = (not text.startswith(self.bos_text)) if special is None else special
        return list(self.tokenizer.encode(text, bos=bos))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context == "":
            cont = self.encode(continuation, special=False)
            return ([self.bos], cont) if cont[:1] != [self.bos] else (cont[:1], cont[1:])
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx):]

    # -- scoring ---------------------------------------------------------------------------------------
    def _bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="req", disable=not self.progress or total == 0, leave=False)

    @torch.inference_mode()
    def score_tokens(self, requests: Sequence[tuple[list[int], list[int]]],
                     desc: str = "ilm: loglikelihood") -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether greedy decoding would produce the continuation).

        Requests with the same input (context + continuation minus its last token, as truncated) share one
        forward pass, and so does an input that is a prefix of another, shorter by at most `_SHARE` tokens (a
        causal model's outputs at a prefix do not depend on what follows): the choices of a question usually
        cost one pass together. Rows are right-padded in length-sorted batches; each row's RoPE length is its
        own (`rope_len`), so under dynamic NTK a score never depends on the rest of its batch."""
        plan = []
        for ctx, cont in requests:
            if not cont:
                raise ValueError("an empty continuation cannot be scored")
            plan.append((tuple((ctx + cont)[-(self.max_length + 1):][:-1]), cont))
        dynamic = getattr(self.model.rope, "kind", None) == "dynamic"
        host = _hosts({inp for inp, _ in plan}, self.model.config.max_position_embeddings if dynamic else None)
        need: dict[tuple[int, ...], int] = {}  # host input -> how many of its positions are scored, from the end
        for inp, cont in plan:
            h = host[inp]
            need[h] = max(need.get(h, 0), len(h) - len(inp) + len(cont))
        logprobs: dict[tuple[int, ...], torch.Tensor] = {}
        order = sorted(need, key=lambda t: -len(t))
        head = self.model.head_weight()
        served = {}  # host -> requests it answers, for the progress bar
        for inp, _ in plan:
            served[host[inp]] = served.get(host[inp], 0) + 1
        with self._bar(len(plan), desc) as bar:
            for i in range(0, len(order), self.batch_size):
                chunk = order[i : i + self.batch_size]
                ids = torch.zeros(len(chunk), len(chunk[0]), dtype=torch.long)
                for row, inp in enumerate(chunk):
                    ids[row, : len(inp)] = torch.tensor(inp)
                rope_len = torch.tensor([len(inp) for inp in chunk], device=self.device)
                hidden = self.model(ids.to(self.device), return_hidden=True, rope_len=rope_len)
                self.forwards += 1
                for row, inp in enumerate(chunk):
                    h = hidden[row, len(inp) - need[inp] : len(inp)]
                    logprobs[inp] = F.log_softmax(F.linear(h, head).float(), dim=-1)
                bar.update(sum(served[inp] for inp in chunk))
        out = []
        for inp, cont in plan:
            h = host[inp]
            end = need[h] - (len(h) - len(inp))  # this input's last position within the host's scored rows
            lp = logprobs[h][end - len(cont) : end]
            target = torch.tensor(cont, device=lp.device)
            ll = lp.gather(1, target[:, None]).sum().item()
            greedy = bool((lp.argmax(dim=-1) == target).all())
            out.append((ll, greedy))
        return out

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        return self.score_tokens([self.encode_pair(c, x) for c, x in pairs])

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        """Per text: (total log-likelihood of its tokens, number of tokens scored)."""
        windows, owner = [], []
        for i, text in enumerate(texts):
            for w in rolling_windows(self.encode(text), self.bos, self.max_length):
                windows.append(w)
                owner.append(i)
        scores = self.score_tokens(windows, desc="ilm: loglikelihood_rolling (windows)")
        out = [[0.0, 0] for _ in texts]
        for i, (ctx, cont), (ll, _) in zip(owner, windows, scores):
            out[i][0] += ll
            out[i][1] += len(cont)
        return [(ll, n) for ll, n in out]

    # -- generation ------------------------------------------------------------------------------------
    def generate_until(self, contexts: Sequence[str], until: Sequence[str], max_gen_toks: int,
                       sampling: dict | None = None) -> list[str]:
        """Continuations (greedy unless `sampling` gives `temperature`/`top_p`/`top_k`/`seed`), each cut before
        the first stop string; the EOS token stops a row too. Prompts run in batches of similar length (longest
        first) and a batch stops once every row has produced a stop string."""
        from ilm.model.generate import Sampling, generate_stream

        keep = max(1, self.max_length - max_gen_toks)
        stops = [s for s in until if s]
        params = {"greedy": True} if not sampling else {"greedy": False, **sampling}
        prompts = [self.encode(c)[-keep:] for c in contexts]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[str] = [""] * len(prompts)
        with self._bar(len(prompts), "ilm: generate_until") as bar:
            for b in range(0, len(order), self.batch_size):
                rows = order[b : b + self.batch_size]
                new: list[list[int]] = [[] for _ in rows]
                done = [False] * len(rows)
                if "seed" in params:  # a different draw per batch: repeats of a prompt are independent samples
                    params["seed"] = int(sampling["seed"]) + b
                cfg = Sampling(max_new_tokens=max_gen_toks, stop_ids=(self.eos,), **params)
                with torch.inference_mode():
                    for step in generate_stream(self.model, [prompts[i] for i in rows], cfg):
                        for j, token in enumerate(step):
                            if token is None or done[j]:
                                continue
                            if token == self.eos:
                                done[j] = True
                                continue
                            new[j].append(token)
                            if stops:  # the text so far already holds a stop string: the rest is cut anyway
                                tail = self.tokenizer.decode(new[j][-64:], skip_special=True)
                                done[j] = any(s in tail for s in stops)
                        if all(done):
                            break
                self.forwards += 1
                for j, i in enumerate(rows):
                    text = self.tokenizer.decode(new[j], skip_special=True)
                    for stop in stops:
                        text = text.split(stop)[0]
                    out[i] = text
                bar.update(len(rows))
        return out
