"""The offline CLIP BPE tokenizer and the template prompt of the data contract."""

import json

import numpy as np
import pytest
from transformers import CLIPTokenizer

from sdjax import tokenizer as tok


@pytest.fixture(scope="module")
def clip():
    return tok.load_tokenizer()


def test_vocabulary_is_clip(clip):
    vocab, merges = tok.bundled_vocab_and_merges()
    assert len(merges) == 48894
    assert len(vocab) == len(clip) == tok.VOCAB_SIZE == 49408
    assert vocab["<|startoftext|>"] == tok.BOS_ID and vocab["<|endoftext|>"] == tok.EOS_ID
    # Byte-level alphabet: "!" is the first symbol, the space byte is spelled U+0120.
    assert vocab["!"] == 0 and vocab["Ġ"] == 220 and vocab["!</w>"] == 256


def test_known_ids(clip):
    assert clip("a photo of a dog")["input_ids"] == [49406, 320, 1125, 539, 320, 1929, 49407]
    assert tok.caption_ids(clip, "sks") == [tok.PLACEHOLDER_ID] == [48136]
    assert tok.caption_ids(clip, "A  Photo of a DOG") == [320, 1125, 539, 320, 1929]
    assert clip.pad_token_id == tok.EOS_ID


def test_clause_ids(clip):
    ids = tok.clause_ids(clip, "dog")
    assert ids == [267, 518, 1929, 533, 48136]
    two_tokens = tok.clause_ids(clip, "teddybear")
    assert two_tokens[2:-2] == tok.caption_ids(clip, "teddybear") and len(two_tokens[2:-2]) > 1
    with pytest.raises(ValueError, match="malformed"):
        tok.clause_ids(clip, "")


def test_template_positions(clip):
    prompt = tok.template_prompt_ids("a cat and a dog", ["cat", "dog"], pad_id=0, tokenizer=clip)
    ids = prompt.ids
    assert ids.shape == (77,) and ids.dtype == np.int32
    assert ids[0] == tok.BOS_ID
    assert list(ids[prompt.placeholder_positions]) == [48136, 48136]
    assert [ids[p] for p in prompt.entity_positions] == [
        tok.caption_ids(clip, "cat")[0],
        tok.caption_ids(clip, "dog")[0],
    ]
    length = 1 + 5 + 2 * 5
    assert ids[length] == tok.EOS_ID and not ids[length + 1 :].any()
    expected = [
        tok.BOS_ID,
        *tok.caption_ids(clip, "a cat and a dog, the cat is sks, the dog is sks"),
    ]
    assert list(ids[:length]) == expected


def test_truncation_keeps_eos(clip):
    caption = " ".join(["red"] * 70)
    prompt = tok.template_prompt_ids(caption, ["cat", "dog"], pad_id=tok.EOS_ID, tokenizer=clip)
    ids = prompt.ids
    assert len(ids) == 77 and ids[-1] == tok.EOS_ID and (ids == tok.PLACEHOLDER_ID).sum() == 1
    # 1 + 70 caption ids: the first clause (5 ids) ends at 75, the second is cut.
    assert list(prompt.placeholder_positions) == [75, 0]
    assert list(prompt.entity_positions) == [73, 0]
    long = tok.template_prompt_ids(" ".join(["red"] * 90), ["cat"], pad_id=0, tokenizer=clip)
    assert long.ids[-1] == tok.EOS_ID and list(long.placeholder_positions) == [0]


def test_model_folder_tokenizer_is_preferred(tmp_path, clip):
    vocab, merges = tok.bundled_vocab_and_merges()
    folder = tmp_path / "tokenizer"
    sd2 = CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!", model_max_length=77)
    sd2.save_pretrained(str(folder))
    loaded = tok.load_tokenizer(tmp_path)
    assert loaded is not clip and loaded.pad_token_id == 0
    assert tok.caption_ids(loaded, "a photo of a dog") == tok.caption_ids(clip, "a photo of a dog")
    with pytest.raises(FileNotFoundError, match=r"no tokenizer folder at .*no-such-model"):
        tok.load_tokenizer(tmp_path / "no-such-model")
    assert tok.load_tokenizer(tmp_path / "no-such-model", bundled_if_missing=True) is clip


def test_model_folder_with_vocab_files(tmp_path):
    vocab, merges = tok.bundled_vocab_and_merges()
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(map(" ".join, merges)) + "\n")
    loaded = tok.load_tokenizer(tmp_path)
    assert loaded("a photo of a dog")["input_ids"] == [49406, 320, 1125, 539, 320, 1929, 49407]


def test_foreign_tokenizer_is_refused(tmp_path):
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(str(tmp_path / "tokenizer"))
    with pytest.raises(ValueError, match="CLIP BPE needs"):
        tok.load_tokenizer(tmp_path)
