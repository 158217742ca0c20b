"""CLIP's byte-level BPE tokenizer, token for token as transformers' `CLIPTokenizer`.

  tok = load_tokenizer('.../stable-diffusion-v1-5/tokenizer')   # vocab.json + merges.txt
  ids = tok(['a photo of an astronaut'])                          # [1, 77] int32

Steps (those of transformers' tokenizers-backed CLIPTokenizer, no ftfy):
1. special tokens (`<|startoftext|>`, `<|endoftext|>`) are cut out of the raw text;
2. the rest is NFC-normalised, every whitespace run becomes one space, and it is lowercased;
3. it is split into words: the contractions 's 't 're 've 'm 'll 'd, runs of letters, single
   digits, and runs of other non-space characters (whitespace is dropped);
4. each word's UTF-8 bytes are mapped to printable characters (GPT-2's byte table), the last
   symbol gets the `</w>` suffix, and BPE merges are applied lowest rank first;
5. symbols missing from the vocabulary become the unknown token;
6. `[bos] + ids[: max_length - 2] + [eos]`, padded with the pad token to `max_length` (77).

Pure Python (no `regex`, `tokenizers` or `transformers` needed at runtime).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import unicodedata
from collections.abc import Mapping, Sequence

import numpy as np

CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORD_END = "</w>"


@functools.cache
def byte_to_unicode() -> dict[int, str]:
  """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
  printable = (
    list(range(ord("!"), ord("~") + 1))
    + list(range(ord("¡"), ord("¬") + 1))
    + list(range(ord("®"), ord("ÿ") + 1))
  )
  table, extra = {}, 0
  for b in range(256):
    if b in printable:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def _kind(ch: str) -> str:
  if ch.isspace():
    return "space"
  cat = unicodedata.category(ch)
  return {"L": "letter", "N": "number"}.get(cat[0], "other")


def split_words(text: str) -> list[str]:
  """Step 3: CLIP's pre-tokeniser regex, written as a scanner (input already normalised)."""
  words, i, n = [], 0, len(text)
  while i < n:
    if text[i] == "'":
      match = next((c for c in CONTRACTIONS if text.startswith(c, i)), None)
      if match:
        words.append(match)
        i += len(match)
        continue
    kind = _kind(text[i])
    if kind == "space":
      i += 1
      continue
    if kind == "number":
      words.append(text[i])
      i += 1
      continue
    j = i + 1
    while j < n and _kind(text[j]) == kind:
      j += 1
    words.append(text[i:j])
    i = j
  return words


def normalize(text: str) -> str:
  """Step 2: NFC, whitespace runs -> one space, lowercase."""
  text = unicodedata.normalize("NFC", text)
  out, in_space = [], False
  for ch in text:
    if ch.isspace():
      if not in_space:
        out.append(" ")
      in_space = True
    else:
      out.append(ch)
      in_space = False
  return "".join(out).lower()


@dataclasses.dataclass(frozen=True, eq=False)
class CLIPTokenizer:
  """A CLIP BPE tokenizer.

  Attributes:
    vocab: token string -> id.
    merges: ordered BPE merges (pairs of symbols); rank = position.
    max_length: padded/truncated length (77 for SD).
    pad_token: `<|endoftext|>` for SD 1.x, `!` for SD 2's tokenizer.
  """

  vocab: Mapping[str, int]
  merges: Sequence[tuple[str, str]]
  max_length: int = 77
  bos_token: str = BOS
  eos_token: str = EOS
  pad_token: str = EOS
  unk_token: str = EOS

  def __post_init__(self):
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
      if getattr(self, name) not in self.vocab:
        raise ValueError(f"{name} {getattr(self, name)!r} is not in the vocabulary")
    if self.max_length < 2:
      raise ValueError(f"max_length must be >= 2, got {self.max_length}")
    for a, b in self.merges:
      if a + b not in self.vocab:
        raise ValueError(f"merge ({a!r}, {b!r}) gives {a + b!r}, which is not in the vocabulary")
    object.__setattr__(self, "_ranks", {pair: r for r, pair in enumerate(self.merges)})
    object.__setattr__(self, "_cache", {})

  @property
  def bos_token_id(self) -> int:
    return self.vocab[self.bos_token]

  @property
  def eos_token_id(self) -> int:
    return self.vocab[self.eos_token]

  @property
  def pad_token_id(self) -> int:
    return self.vocab[self.pad_token]

  def bpe(self, word: str) -> list[str]:
    """Steps 4: byte-map one word and merge its symbols; returns the final symbols."""
    if word in self._cache:
      return self._cache[word]
    table = byte_to_unicode()
    symbols = [table[b] for b in word.encode("utf-8")]
    symbols[-1] += WORD_END
    while len(symbols) > 1:
      ranked = [
        (self._ranks.get((a, b), None), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))
      ]
      ranked = [(r, i) for r, i in ranked if r is not None]
      if not ranked:
        break
      best = min(ranked)[0]
      pair = self.merges[best]
      merged, i = [], 0
      while i < len(symbols):
        if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == pair:
          merged.append(symbols[i] + symbols[i + 1])
          i += 2
        else:
          merged.append(symbols[i])
          i += 1
      symbols = merged
    self._cache[word] = symbols
    return symbols

  def encode(self, text: str) -> list[int]:
    """Token ids of `text` without bos/eos, padding or truncation."""
    if not isinstance(text, str):
      raise TypeError(f"text must be a str, got {type(text).__name__}")
    ids: list[int] = []
    specials = (self.bos_token, self.eos_token)
    start = 0
    while start <= len(text):
      hits = [(text.find(s, start), s) for s in specials]
      hits = [(p, s) for p, s in hits if p >= 0]
      end, special = min(hits) if hits else (len(text), None)
      for word in split_words(normalize(text[start:end])):
        ids += [self.vocab.get(sym, self.vocab[self.unk_token]) for sym in self.bpe(word)]
      if special is None:
        break
      ids.append(self.vocab[special])
      start = end + len(special)
    return ids

  def encode_batch(
    self, prompts: str | Sequence[str], max_length: int | None = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """`(input_ids [B, L] int32, attention_mask [B, L] int32)`: bos + truncated ids + eos,
    padded with the pad token to L = max_length (default `self.max_length`)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    length = max_length or self.max_length
    ids = np.full((len(prompts), length), self.pad_token_id, np.int32)
    mask = np.zeros((len(prompts), length), np.int32)
    for row, text in enumerate(prompts):
      tokens = [self.bos_token_id, *self.encode(text)[: length - 2], self.eos_token_id]
      ids[row, : len(tokens)] = tokens
      mask[row, : len(tokens)] = 1
    return ids, mask

  def __call__(self, prompts: str | Sequence[str], max_length: int | None = None) -> np.ndarray:
    """`input_ids [B, max_length]` int32, as diffusers calls the tokenizer (pad + truncate)."""
    return self.encode_batch(prompts, max_length)[0]

  def decode(self, ids: Sequence[int]) -> str:
    """Inverse of `encode` up to normalisation (special tokens kept as text)."""
    inverse = {v: k for k, v in self.vocab.items()}
    from_unicode = {c: b for b, c in byte_to_unicode().items()}
    text = "".join(inverse[int(i)] for i in ids).replace(WORD_END, " ")
    out = bytearray()
    for ch in text:
      out += (
        ch.encode("utf-8") if ch == " " or ch not in from_unicode else bytes([from_unicode[ch]])
      )
    return out.decode("utf-8", errors="replace").strip()


def read_merges(path: str | pathlib.Path) -> list[tuple[str, str]]:
  """merges.txt -> ordered pairs (the `#version` header and blank lines are skipped)."""
  merges = []
  for number, line in enumerate(pathlib.Path(path).read_text(encoding="utf-8").splitlines(), 1):
    if not line.strip() or (number == 1 and line.startswith("#version")):
      continue
    parts = line.split()
    if len(parts) != 2:
      raise ValueError(f"{path}:{number}: a merge must be two symbols, got {line!r}")
    merges.append((parts[0], parts[1]))
  return merges


def _read_tokenizer_json(path: pathlib.Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
  """vocab and merges from a `tokenizers` tokenizer.json holding a CLIP-style BPE model."""
  model = json.loads(path.read_text(encoding="utf-8")).get("model", {})
  if model.get("type") != "BPE" or model.get("end_of_word_suffix") != WORD_END:
    raise ValueError(f"{path}: not a CLIP BPE tokenizer (type {model.get('type')!r})")
  merges = []
  for m in model.get("merges", []):
    pair = m.split() if isinstance(m, str) else list(m)
    if len(pair) != 2:
      raise ValueError(f"{path}: a merge must be two symbols, got {m!r}")
    merges.append((pair[0], pair[1]))
  return dict(model["vocab"]), merges


def load_tokenizer(folder: str | pathlib.Path, max_length: int | None = None) -> CLIPTokenizer:
  """An SD `tokenizer/` folder -> `CLIPTokenizer`.

  Reads `vocab.json` + `merges.txt` (the files SD checkpoints ship), or else `tokenizer.json`
  (what transformers 5 writes), plus the special tokens and `model_max_length` from
  `tokenizer_config.json` / `special_tokens_map.json` when present.
  """
  folder = pathlib.Path(folder)
  if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merges = read_merges(folder / "merges.txt")
  elif (folder / "tokenizer.json").is_file():
    vocab, merges = _read_tokenizer_json(folder / "tokenizer.json")
  else:
    raise FileNotFoundError(f"{folder}: neither vocab.json + merges.txt nor tokenizer.json found")
  settings: dict = {}
  for name in ("tokenizer_config.json", "special_tokens_map.json"):
    if (folder / name).is_file():
      settings.update(json.loads((folder / name).read_text(encoding="utf-8")))
  tokens = {}
  for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
    value = settings.get(key)
    if isinstance(value, dict):  # {"content": "<|endoftext|>", ...}
      value = value.get("content")
    if value is not None:
      tokens[key] = value
  length = max_length or settings.get("model_max_length", 77)
  if length > 10_000:  # transformers' "unset" sentinel is ~1e30
    length = 77
  return CLIPTokenizer(vocab=vocab, merges=merges, max_length=int(length), **tokens)
