"""CLIP tokenizer vs transformers' CLIPTokenizer on a small BPE vocabulary trained in the test."""

import collections
import json

import numpy as np
import pytest

from jhmr.models import clip_tokenizer as T

transformers = pytest.importorskip("transformers")

CORPUS = """a photo of an astronaut riding a horse on mars. a photograph of a person doing
yoga, high quality, 4k. an athlete is doing pole vault in the stadium! the athlete's pose
is hard; we'll see. a man and a woman dancing tango at night, photorealistic, detailed"""
MISSING = {"q", "z", "é"}  # byte symbols left out of the vocabulary -> unknown token

PROMPTS = [
  "a photo of an astronaut riding a horse on mars",
  "A PHOTO   of an\tAstronaut\n\nriding",
  "the athlete's pose isn't hard, we'll see... (1234) 56.7%",
  "quiz: zebra & quokka -- café naïve résumé",
  "emoji 🙂 and CJK 漢字 and ¡hola!",
  "   leading and trailing spaces   ",
  "",
  "<|startoftext|>special tokens<|endoftext|> in text",
  "don't 'quote' it's ''double''",
  " ".join(["photo of a person doing yoga"] * 30),  # > 75 tokens: truncated
]


def _train_bpe(corpus, num_merges=120):
  """A deterministic toy BPE trainer (byte-level symbols, `</w>` word ends), for test data."""
  table = T.byte_to_unicode()
  words = collections.Counter(T.split_words(T.normalize(corpus)))
  splits = {}
  for w in words:
    syms = [table[b] for b in w.encode("utf-8")]
    syms[-1] += T.WORD_END
    splits[w] = syms
  merges = []
  for _ in range(num_merges):
    pairs = collections.Counter()
    for w, syms in splits.items():
      for a, b in zip(syms, syms[1:]):
        if not (MISSING & {a, b, a.removesuffix("</w>"), b.removesuffix("</w>")}):
          pairs[a, b] += words[w]
    if not pairs:
      break
    (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
    merges.append((a, b))
    for w, syms in splits.items():
      out, i = [], 0
      while i < len(syms):
        if i < len(syms) - 1 and (syms[i], syms[i + 1]) == (a, b):
          out.append(a + b)
          i += 2
        else:
          out.append(syms[i])
          i += 1
      splits[w] = out
  base = [c for c in T.byte_to_unicode().values() if c not in MISSING]
  tokens = base + [c + T.WORD_END for c in base] + [a + b for a, b in merges]
  tokens += [T.BOS, T.EOS]
  vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
  return vocab, merges


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  vocab, merges = _train_bpe(CORPUS)
  path = tmp_path_factory.mktemp("tokenizer")
  (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
  lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
  (path / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def pair(folder):
  ref = transformers.CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)
  return ref, T.load_tokenizer(folder)


def test_vocab_has_merges_and_unknowns(pair):
  _, ours = pair
  assert len(ours.merges) >= 100
  assert "q" not in ours.vocab and "photo</w>" in ours.vocab


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_match_transformers(pair, prompt):
  ref, ours = pair
  want = ref(prompt, padding="max_length", max_length=77, truncation=True)
  ids, mask = ours.encode_batch(prompt)
  assert ids.shape == (1, 77) and ids.dtype == np.int32
  np.testing.assert_array_equal(ids[0], want["input_ids"])
  np.testing.assert_array_equal(mask[0], want["attention_mask"])
  assert ours.encode(prompt) == ref(prompt, add_special_tokens=False)["input_ids"]


def test_batch_and_truncation(pair):
  ref, ours = pair
  ids = ours(PROMPTS)
  want = ref(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="np")
  np.testing.assert_array_equal(ids, want["input_ids"])
  long = ids[-1]
  assert long[0] == ours.bos_token_id and long[-1] == ours.eos_token_id
  unk = ours.vocab[ours.unk_token]
  assert unk in ours.encode("quiz")  # 'q' and 'z' are not in the vocabulary


def test_sd2_style_pad_token(folder, tmp_path):
  """SD 2's tokenizer pads with '!' (id of '!' in the vocabulary), not with eos."""
  for f in ("vocab.json", "merges.txt"):
    (tmp_path / f).write_bytes((folder / f).read_bytes())
  (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": "!"}))
  ours = T.load_tokenizer(tmp_path)
  ref = transformers.CLIPTokenizer.from_pretrained(str(tmp_path), model_max_length=77)
  want = ref("a horse", padding="max_length", max_length=77, truncation=True)["input_ids"]
  np.testing.assert_array_equal(ours("a horse")[0], want)
  assert ours.pad_token_id == ours.vocab["!"] and want[-1] == ours.pad_token_id


def test_tokenizer_json_folder(pair, tmp_path):
  """transformers 5 saves tokenizer.json only; the loader reads its vocab and merges."""
  ref, ours = pair
  ref.save_pretrained(tmp_path)
  assert not (tmp_path / "merges.txt").exists()
  loaded = T.load_tokenizer(tmp_path)
  assert loaded.merges == ours.merges and dict(loaded.vocab) == dict(ours.vocab)
  np.testing.assert_array_equal(loaded(PROMPTS), ours(PROMPTS))


def test_decode_round_trip(pair):
  _, ours = pair
  text = "a photo of an astronaut, 4k!"
  assert ours.decode(ours.encode(text)) == "a photo of an astronaut , 4 k !"


def test_bad_inputs(folder, tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    T.load_tokenizer(tmp_path)
  vocab = {"a": 0, T.EOS: 1, T.BOS: 2}
  with pytest.raises(ValueError, match="not in the vocabulary"):
    T.CLIPTokenizer(vocab=vocab, merges=[("a", "b")])
  tok = T.CLIPTokenizer(vocab=vocab, merges=[])
  with pytest.raises(TypeError, match="str"):
    tok.encode(3)
