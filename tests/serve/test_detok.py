"""Incremental detokenisation: pieces add up to the whole decode for any ids, and the streamed text (the
tracker, id by id) is what `parse_reply` reads from the finished ids, for every id sequence: text after a
call, a stray <|action_start|>, control tokens anywhere, half characters, stop strings."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ilm.serve.detok import IncrementalDecoder, TextTracker
from ilm.tokenizer.chat import parse_reply

SETTINGS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _ids(tok) -> st.SearchStrategy[list[int]]:
    controls = sorted(tok.control_ids.values())
    ordinary = st.integers(0, tok.vocab_size - 1).filter(lambda i: i not in tok.control_ids.values())
    word = st.sampled_from(tok.encode(" Sure. Done. héllo wörld 天气 🙂 {\"city\": \"Paris\"}"))
    return st.lists(st.one_of(ordinary, word, word, st.sampled_from(controls)), max_size=40)


def _stream(tracker: TextTracker, ids: list[int]) -> str:
    out = []
    for i in ids:
        text, hit = tracker.push(i)
        out.append(text)
        if hit:
            break
    out.append(tracker.flush()[0])
    assert "".join(out) == tracker.text  # what was streamed is what the non-streamed answer carries
    return tracker.text


def _runs(tok, ids: list[int]) -> str:
    """Plain text: ordinary ids decoded in runs between control tokens."""
    out, run = [], []
    for i in [*ids, None]:
        if i is None or i in tok.control_ids.values():
            out.append(tok.decode(run))
            run = []
        else:
            run.append(i)
    return "".join(out)


def test_incremental_decoder_adds_up_to_the_whole_decode(tok):
    @SETTINGS
    @given(st.lists(st.integers(0, tok.vocab_size - 1).filter(lambda i: i not in tok.control_ids.values()),
                    max_size=60))
    def check(ids):
        dec = IncrementalDecoder(tok)
        pieces = [dec.push(i) for i in ids] + [dec.end()]
        assert "".join(pieces) == tok.decode(ids)
        assert max(len(dec.ids), 0) == 0  # end() empties it

    check()


def test_streamed_text_is_parse_reply_content_for_any_ids(tok):
    @SETTINGS
    @given(_ids(tok))
    def check(ids):
        assert _stream(TextTracker(tok), ids) == parse_reply(ids, tok).content
        assert _stream(TextTracker(tok, mode="plain"), ids) == _runs(tok, ids)

    check()


def test_forced_prefix_and_stop_strings(tok):
    header = [tok.control_ids["<|action_start|>"], tok.control_ids["<|plugin|>"], *tok.encode('\n{"name": "f"')]

    @SETTINGS
    @given(_ids(tok), st.sampled_from(["Done", ".", "o", "ll", "\ufffd"]))
    def check(ids, stop):
        assert _stream(TextTracker(tok, prefix=header), ids) == parse_reply(header + ids, tok).content
        content = parse_reply(ids, tok).content
        at = content.find(stop)
        assert _stream(TextTracker(tok, [stop]), ids) == (content if at < 0 else content[:at])

    check()


def test_the_reported_cases(tok):
    """Text after a call, and after a stray <|action_start|>, is content both ways (it was 'Sure.' streamed
    against 'Sure. Done.' parsed)."""
    c = tok.control_ids
    call = tok.encode('\n{"name": "get_weather", "parameters": {}}')
    after_call = [*tok.encode("Sure."), c["<|action_start|>"], c["<|plugin|>"], *call, c["<|action_end|>"],
                  *tok.encode(" Done.")]
    stray = [*tok.encode("Sure."), c["<|action_start|>"], *tok.encode(" Done.")]
    for ids in (after_call, stray):
        assert _stream(TextTracker(tok), ids) == parse_reply(ids, tok).content == "Sure. Done."
    assert len(parse_reply(after_call, tok).tool_calls) == 1
