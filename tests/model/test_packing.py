"""A packed row holds several documents: its logits must equal each document run alone, on every backend."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ilm.model import build_model, doc_ids_from_lens, get_preset, packed_batch, positions_from_doc_ids
from ilm.model.attention import lens_from_doc_ids

MODEL = build_model(get_preset("tiny"), seed=10).eval()


def _packed_logits(ids, doc_lens, backend):
    doc_ids = doc_ids_from_lens(doc_lens)
    with torch.no_grad():
        return MODEL(ids, positions_from_doc_ids(doc_ids), packed_batch(doc_ids, backend))


def _alone(ids, doc_lens):
    rows = []
    with torch.no_grad():
        for b, lens in enumerate(doc_lens):
            start, parts = 0, []
            for n in lens:
                parts.append(MODEL(ids[b : b + 1, start : start + n]))
                start += n
            rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows)


DOCS = [[5, 11, 1, 15], [32], [20, 12]]


@pytest.mark.parametrize("backend", ["sdpa", "blocks", "flex"])
def test_packed_row_equals_documents_alone(backend):
    ids = torch.randint(0, MODEL.config.vocab_size, (3, 32))
    got = _packed_logits(ids, DOCS, backend)
    assert (got - _alone(ids, DOCS)).abs().max().item() <= 1e-4


def test_packing_changes_nothing_only_when_masked():
    """Control: without the document mask the second document sees the first, and its logits change."""
    ids = torch.randint(0, MODEL.config.vocab_size, (1, 32))
    with torch.no_grad():
        unmasked = MODEL(ids)
    alone = _alone(ids, [[12, 20]])
    assert (unmasked[:, 12:] - alone[:, 12:]).abs().max().item() > 1e-3


def test_positions_restart_at_each_document():
    doc_ids = doc_ids_from_lens([[3, 2, 4]])
    assert positions_from_doc_ids(doc_ids).tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert lens_from_doc_ids(doc_ids) == [[3, 2, 4]]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=5))
def test_any_split_of_a_row_matches(lens):
    ids = torch.randint(0, MODEL.config.vocab_size, (1, sum(lens)))
    ref = _alone(ids, [lens])
    for backend in ("sdpa", "blocks"):
        assert (_packed_logits(ids, [lens], backend) - ref).abs().max().item() <= 1e-4


def test_rows_of_different_total_length_are_rejected():
    with pytest.raises(ValueError, match="same length"):
        doc_ids_from_lens([[3, 4], [5]])
