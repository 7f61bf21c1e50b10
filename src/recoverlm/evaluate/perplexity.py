"""Perplexity of a text corpus with a sliding window, for models shorter than the text.

The corpus is tokenized once and cut into windows of at most `window` tokens that start every
`stride` tokens (the strided scheme of the Hugging Face "perplexity of fixed-length models" guide).
Each window scores only the tokens no earlier window scored; the rest of it is context. A smaller
stride gives every token more context (a lower, truer perplexity) at more forward passes.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import RecoverLMError
from ..lm.modes import eval_mode
from ..offline import go_offline

TEXT_SUFFIXES = (".txt", ".md")
DEFAULT_MAX_WINDOW = 1024


def check_window(window: int, stride: int, max_positions: int | None = None) -> None:
    """A window needs one token of context to score anything; a stride past the window would skip tokens."""
    if window < 2:
        raise RecoverLMError(f"window must be at least 2 tokens, got {window}")
    if not 1 <= stride <= window:
        raise RecoverLMError(f"stride must be between 1 and the window ({window}), got {stride}")
    if max_positions is not None and window > max_positions:
        raise RecoverLMError(f"window {window} is longer than the model's {max_positions} positions")


def window_spans(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) of each window over n tokens; tokens first_scored..end-1 are scored.

    Windows start every `stride` tokens, but never after the last token of the previous window:
    the first token a window scores must be predicted from a token inside it. So with
    stride == window consecutive windows share exactly one token, and every token from position 1
    on is scored exactly once (the first token of the text has nothing to be predicted from).
    """
    check_window(window, stride)
    spans: list[tuple[int, int, int]] = []
    begin, scored_to = 0, 1
    while scored_to < n:
        end = min(begin + window, n)
        spans.append((begin, end, scored_to))
        scored_to = end
        begin = min(begin + stride, end - 1)
    return spans


def _max_positions(model) -> int | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def sliding_window_nll(model, input_ids: torch.Tensor, window: int, stride: int, batch_size: int = 8,
                       progress: bool = False, prefix: list[int] | tuple[int, ...] = ()) -> tuple[float, int, list[dict]]:
    """Summed NLL (nats) and count of the scored tokens of a 1-D token sequence, plus per-window sums.

    Several windows go through one forward pass; the shorter last window is right-padded and
    masked, which a causal model's real tokens never see. Only the positions that predict a scored
    token reach the LM head. `prefix` (a BOS token) opens every window, within its `window`
    positions, and predicts the text's first token, which is then scored too.
    Returns (total_nll, n_tokens, [{begin, end, tokens, nll}, ...]).
    """
    if input_ids.dim() != 1:
        raise RecoverLMError(f"input_ids must be one sequence (1-D), got shape {tuple(input_ids.shape)}")
    if batch_size < 1:
        raise RecoverLMError(f"batch_size must be at least 1, got {batch_size}")
    check_window(window, stride, _max_positions(model))
    p = len(prefix)
    if window - p < 2:
        raise RecoverLMError(f"window must be at least {p + 2} tokens with a {p}-token prefix, got {window}")
    spans = window_spans(len(input_ids), window - p, min(stride, window - p))
    if not spans:
        raise RecoverLMError(f"need at least 2 tokens to score, got {len(input_ids)}")
    if p:
        spans[0] = (spans[0][0], spans[0][1], 0)  # the prefix predicts the text's first token
    device = next(model.parameters()).device
    ids = input_ids.long().cpu()
    total, n_tokens, per_window = 0.0, 0, []
    opening = torch.tensor(list(prefix), dtype=torch.long)
    with eval_mode(model), torch.inference_mode():
        bar = tqdm(total=len(spans), desc="perplexity", unit="window", disable=not progress, leave=False)
        for start in range(0, len(spans), batch_size):
            chunk = spans[start:start + batch_size]
            length = p + max(end - begin for begin, end, _ in chunk)
            batch = torch.zeros(len(chunk), length, dtype=torch.long)
            mask = torch.zeros(len(chunk), length, dtype=torch.long)
            # predicts[r, i]: position i of row r predicts a scored token (the one at i + 1).
            predicts = torch.zeros(len(chunk), length - 1, dtype=torch.bool)
            for r, (begin, end, first) in enumerate(chunk):
                batch[r, :p] = opening
                batch[r, p:p + end - begin] = ids[begin:end]
                mask[r, :p + end - begin] = 1
                predicts[r, p + first - begin - 1:p + end - begin - 1] = True
            cols = predicts.any(0).nonzero().squeeze(1)
            out = model(input_ids=batch.to(device), attention_mask=mask.to(device),
                        logits_to_keep=cols.to(device), use_cache=False)
            logits = out.logits[predicts[:, cols].to(device)].float()
            targets = batch[:, 1:][predicts].to(device)
            nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none").double().cpu()
            for (begin, end, first), row in zip(chunk, torch.split(nll, predicts.sum(1).tolist())):
                per_window.append({"begin": begin, "end": end, "tokens": end - first, "nll": float(row.sum())})
            total += float(nll.sum())
            n_tokens += nll.numel()
            bar.update(len(chunk))
        bar.close()
    return total, n_tokens, per_window


def perplexity(model, tokenizer, texts: list[str], window: int | None = None, stride: int | None = None,
               batch_size: int = 8, progress: bool = True) -> dict:
    """exp(mean NLL per token) of the texts read as one stream, with a sliding window.

    Texts are joined with the tokenizer's EOS token (or a blank line) and tokenized once without
    special tokens, as the usual wikitext evaluation does; every window opens with the BOS token
    where the tokenizer adds one (bos_prefix); empty texts are dropped. The window
    defaults to the model's positions, at most 1024, and the stride to half the window.
    """
    max_positions = _max_positions(model)
    if window is None:
        window = min(max_positions or DEFAULT_MAX_WINDOW, DEFAULT_MAX_WINDOW)
    if stride is None:
        stride = max(window // 2, 1)
    check_window(window, stride, max_positions)
    docs = [t for t in texts if isinstance(t, str) and t.strip()]
    if not docs:
        raise RecoverLMError("no text to score: every text is empty")
    sep = tokenizer.eos_token or "\n\n"
    ids = tokenizer(sep.join(docs), add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise RecoverLMError(f"the text has {len(ids)} token(s); perplexity needs at least 2")
    prefix = bos_prefix(tokenizer)
    total, n_tokens, per_window = sliding_window_nll(model, torch.tensor(ids), window, stride, batch_size, progress,
                                                     prefix=prefix)
    nll = total / n_tokens
    return {"perplexity": math.exp(nll) if nll < 700 else math.inf, "nll": nll, "tokens": n_tokens,
            "window": window, "stride": stride, "documents": len(docs), "windows": len(per_window),
            "bos_prefix": bool(prefix)}


def bos_prefix(tokenizer) -> list[int]:
    """[BOS] where the tokenizer opens every sequence with it (Gemma: the model is lost without it,
    and lm-eval's rolling windows open with it too); [] where it adds none (Llama 3, SmolLM2)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    added = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return [bos] if added[:1] == [bos] and plain[:1] != [bos] else []


def _offline_datasets():
    """The datasets library with every Hub lookup switched off (the same switch the task suites use)."""
    go_offline()
    import datasets

    datasets.logging.disable_progress_bar()
    return datasets


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _column(ds, column: str, where: str) -> list[str]:
    if column not in ds.column_names:
        raise RecoverLMError(f"{where} has no column {column!r} (columns: {', '.join(ds.column_names)})")
    values = list(ds[column])
    for i, v in enumerate(values):
        if v is not None and not isinstance(v, str):
            raise RecoverLMError(f"{where}: column {column!r} holds {type(v).__name__}, not text (row {i})")
    return [v for v in values if v is not None]


def _read_text_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecoverLMError(f"cannot read {path}: {exc}") from exc
    if not text.strip():
        raise RecoverLMError(f"{path} is empty")
    return [text]


def _read_jsonl_column(path: Path, column: str) -> list[str]:
    from ..data import read_jsonl

    rows = read_jsonl(path, required=(column,))
    # read_jsonl skips blank lines; recover each row's line number for the messages below.
    lines = [i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    texts = []
    for lineno, row in zip(lines, rows):
        if not isinstance(row[column], str):
            raise RecoverLMError(f"{path}:{lineno}: {column!r} is {type(row[column]).__name__}, not text")
        texts.append(row[column])
    return texts


def _read_saved_dataset(path: Path, column: str, split: str) -> list[str]:
    datasets = _offline_datasets()
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged folder: one clear line
        raise RecoverLMError(f"cannot load the saved dataset {path}: {_first_line(exc)}") from exc
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise RecoverLMError(f"{path} has no split {split!r} (splits: {', '.join(ds)})")
        return _column(ds[split], column, f"{path} [{split}]")
    return _column(ds, column, str(path))


def _looks_like_path(source: str) -> bool:
    """A missing "notes.txt" or "./corpus" is a typo in a path, not a dataset name to look up."""
    return source.startswith((".", "/", "~")) or Path(source).suffix.lower() in (*TEXT_SUFFIXES, ".jsonl", ".json")


def load_texts(source: str | Path, column: str = "text", split: str = "test") -> list[str]:
    """The texts to score: a .txt/.md file (one text), a .jsonl file's `column`, a folder written by
    `save_to_disk`, or a dataset already in the local Hugging Face cache. Nothing is downloaded."""
    source = str(source)
    path = Path(source).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            return _read_text_file(path)
        if suffix == ".jsonl":
            return _read_jsonl_column(path, column)
        raise RecoverLMError(f"{path}: unsupported file type {suffix or '(none)'}; use .txt, .md or .jsonl")
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        return _read_saved_dataset(path, column, split)
    if not path.exists() and _looks_like_path(source):
        raise RecoverLMError(f"file not found: {source}")
    datasets = _offline_datasets()
    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as exc:  # noqa: BLE001 - unknown name, not cached, bad split: one line
        raise RecoverLMError(f"cannot load dataset {source!r} (split {split!r}) offline: {_first_line(exc)}") from exc
    return _column(ds, column, f"dataset {source!r} [{split}]")
