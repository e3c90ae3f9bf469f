"""`transformers.AutoTokenizer.from_pretrained(dir)` on a saved build: same ids, same chat text and ids."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CONVS = json.loads((Path(__file__).parent / "data" / "conversations.json").read_text())
TOOLS, TOOL_CONV, CODE_CONV, PLAIN = CONVS["tools"], CONVS["tool_conv"], CONVS["code_conv"], CONVS["plain"]

CONVERSATIONS = [
    (PLAIN[1], None),
    (TOOL_CONV, TOOLS),
    (CODE_CONV, None),
    ([{"role": "user", "content": "call f"},
      {"role": "assistant", "content": None,
       "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": '{"a": [1, 2]}'}},
                      {"name": "g", "parameters": {"b": "是"}}]},
      {"role": "environment", "content": "ok"},
      {"role": "tool", "content": ["r1", 2]}], TOOLS),
]


@pytest.fixture(scope="module")
def hf(full_tok, tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    out = full_tok.save(tmp_path_factory.mktemp("saved"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoTokenizer.from_pretrained(str(out))


def _ids(x):
    return list(x["input_ids"] if hasattr(x, "keys") else x)


def test_files_and_special_tokens(hf, full_tok, tmp_path):
    out = full_tok.save(tmp_path / "t")
    assert {p.name for p in out.iterdir()} >= {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in config["chat_template"] and config["clean_up_tokenization_spaces"] is False
    assert len(hf) == 92544
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (1, 2, 2, 0)
    for name, i in full_tok.control_ids.items():
        assert hf.convert_tokens_to_ids(name) == i


def test_text_ids_match(hf, full_tok, en_text, zh_text, code_text):
    for text in (en_text, zh_text, code_text, "<|im_start|>user\nhi<|im_end|>\n", ""):
        assert _ids(hf(text)) == full_tok.encode(text, special=True)  # no BOS by default, as `ilm tokenizer encode`
        assert _ids(hf("<s>" + text)) == full_tok.encode(text, bos=True, special=True)
        assert hf.encode(text, add_special_tokens=False) == full_tok.encode(text, special=True)
        ids = full_tok.encode(text, bos=True, special=True)
        assert hf.decode(ids) == full_tok.decode(ids)
        assert hf.decode(ids, skip_special_tokens=True) == full_tok.decode(ids, skip_special=True) == text.replace(
            "<|im_start|>", "").replace("<|im_end|>", "")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_text_ids_match_property(hf, full_tok, text):
    assert _ids(hf(text)) == full_tok.encode(text, special=True)


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [False, True])
def test_chat_template_text_and_ids_match(hf, full_tok, index, gen):
    conv, tools = CONVERSATIONS[index]
    ours = full_tok.render(conv, tools=tools, add_generation_prompt=gen)
    text = hf.apply_chat_template(conv, tools=tools, tokenize=False, add_generation_prompt=gen)
    assert text == ours.text
    assert _ids(hf.apply_chat_template(conv, tools=tools, tokenize=True, add_generation_prompt=gen)) == ours.ids
    assert _ids(hf(text)) == ours.ids  # the rendered text tokenized with the defaults: one BOS, not two


_SAFE = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="<"), max_size=40)
_MESSAGE = st.one_of(
    st.builds(lambda r, c: {"role": r, "content": c}, st.sampled_from(["system", "user", "assistant"]), _SAFE),
    st.builds(lambda n, c: {"role": "environment", "name": n, "content": c}, st.sampled_from(["plugin", "interpreter"]), _SAFE),
    st.builds(lambda c, n, a: {"role": "assistant", "content": c, "tool_calls": [{"name": n, "parameters": {"a": a}}]},
              _SAFE, _SAFE, _SAFE),
    st.builds(lambda c: {"role": "assistant", "content": "", "tool_calls": [{"type": "interpreter", "code": c}]}, _SAFE),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_MESSAGE, min_size=1, max_size=5), st.booleans(), st.booleans())
def test_chat_template_property(hf, full_tok, conv, with_tools, gen):
    tools = TOOLS if with_tools else None
    ours = full_tok.render(conv, tools=tools, add_generation_prompt=gen)
    assert hf.apply_chat_template(conv, tools=tools, tokenize=False, add_generation_prompt=gen) == ours.text
    assert _ids(hf.apply_chat_template(conv, tools=tools, tokenize=True, add_generation_prompt=gen)) == ours.ids
    assert _ids(hf(ours.text)) == ours.ids  # content holds no control-token text ("<" excluded)
