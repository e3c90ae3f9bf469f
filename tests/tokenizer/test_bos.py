"""One BOS, never two: ilm's chat ids (what SFT, the reward model, PPO and the server train and decode on)
are pinned, and the exported tokenizer gives exactly those ids both ways a transformers user gets them:
`apply_chat_template(tokenize=True)` and `tok(apply_chat_template(tokenize=False))`."""

from __future__ import annotations

import hashlib
import json
import warnings

import pytest

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CONV = [  # two user turns, the first answered through a tool call
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "Let me check.",
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": {"temperature": 7}},
    {"role": "assistant", "content": "It is 7 degrees in Paris."},
    {"role": "user", "content": "And in 北京?"},
    {"role": "assistant", "content": "I would need to ask the tool again."},
]
# render(CONV, tools=TOOLS) on the 1,024-token test build, recorded before the exported tokenizer stopped
# adding BOS: ilm's own ids did not change
PINNED = (295, 82, "0847fdf464c4208434aff8c2304f68227b12ecb8e693b3fddd2bed2b3865d7c9",
          "1e600f597ad793b64abde5ffa2550d3d5787379f302bf8f2065ec124e7cac1fa")


def _sha(x: list[int]) -> str:
    return hashlib.sha256(json.dumps(x).encode()).hexdigest()


def _ids(x) -> list[int]:
    return list(x["input_ids"] if hasattr(x, "keys") else x)


def _auto(path, **kwargs):
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoTokenizer.from_pretrained(str(path), **kwargs)


def _assert_pinned(tok) -> list[int]:
    r = tok.render(CONV, tools=TOOLS)
    assert (len(r.ids), sum(r.mask), _sha(r.ids), _sha(r.mask)) == PINNED
    assert r.ids.count(tok.bos_id) == 1 and r.ids[0] == tok.bos_id
    return r.ids


def test_two_turn_tool_chat_has_one_bos_through_ilm_and_the_exported_tokenizer(small_tok, tmp_path):
    ids = _assert_pinned(small_tok)
    text = small_tok.render_text(CONV, tools=TOOLS)
    assert small_tok.encode(text, special=True) == ids  # ilm's encoder on the rendered text: no BOS added
    hf = _auto(small_tok.save(tmp_path / "tok"))
    assert hf.apply_chat_template(CONV, tools=TOOLS, tokenize=False) == text
    by_template = _ids(hf.apply_chat_template(CONV, tools=TOOLS, tokenize=True))
    by_call = _ids(hf(hf.apply_chat_template(CONV, tools=TOOLS, tokenize=False)))
    assert by_template == by_call == hf.encode(text) == ids
    assert by_call.count(hf.bos_token_id) == 1


def test_plain_text_gets_bos_only_when_asked(small_tok, tmp_path):
    """As `ilm tokenizer encode` (no --bos): no BOS by default; `add_bos_token=True` is transformers' opt-in."""
    out = small_tok.save(tmp_path / "tok")
    assert json.loads((out / "tokenizer_config.json").read_text())["add_bos_token"] is False
    assert json.loads((out / "tokenizer.json").read_text())["post_processor"] is None
    text = "def main():\n    return 北京"
    assert _ids(_auto(out)(text)) == small_tok.encode(text)
    assert _ids(_auto(out, add_bos_token=True)(text)) == small_tok.encode(text, bos=True) == [
        small_tok.bos_id, *small_tok.encode(text)]


def test_a_tokenizer_json_that_adds_bos_loads_to_the_same_ids_and_saves_without_it(small_tok, tmp_path):
    """Files from an older ilm carry a BOS post-processor: ilm's ids are the same, on both encoders, and
    saving them again writes the new files."""
    from tokenizers import Tokenizer, processors

    from ilm.tokenizer import load_tokenizer

    old = small_tok.save(tmp_path / "old")
    raw = Tokenizer.from_file(str(old / "tokenizer.json"))
    raw.post_processor = processors.TemplateProcessing(  # what ilm's build wrote before
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", small_tok.bos_id)])
    raw.save(str(old / "tokenizer.json"))
    assert Tokenizer.from_file(str(old / "tokenizer.json")).encode("hi").ids[0] == small_tok.bos_id
    tok = load_tokenizer(old)
    assert tok.hf.encode("hi").ids == small_tok.encode("hi")  # the post-processor is gone
    _assert_pinned(tok)
    for fast in (tok.fast, None):  # tiktoken, then HF `tokenizers` (a vocabulary tiktoken cannot run)
        tok.fast = fast
        assert tok.encode("hi 北京", bos=True) == small_tok.encode("hi 北京", bos=True)
        assert tok.encode_batch(["hi", ""], bos=True) == [small_tok.encode("hi", bos=True), [small_tok.bos_id]]
        assert tok.encode("x" * 70_000, bos=True).count(small_tok.bos_id) == 1
    resaved = tok.save(tmp_path / "new")
    assert json.loads((resaved / "tokenizer.json").read_text())["post_processor"] is None
