"""HpoEncoder on the real HPO release: graph initialisation, vocabulary lookup, one-term patients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from phenoclip.data.batch import TERMS
from phenoclip.io.ontology import load_ontology
from phenoclip.models.phenotype import HpoEncoder, hpo_vocabulary, nearest_vocabulary_term, ontology_init
from phenoclip.preprocess.phenotypes import PhenotypeData


@pytest.fixture(scope="module")
def onto():
    return load_ontology()


def _unrelated(onto, t, candidates, rng):
    lineage = onto.ancestors(t, include_self=True)
    while True:
        u = int(rng.choice(candidates))
        if u not in lineage and t not in onto.ancestors(u, include_self=True):
            return u


def test_graph_init_puts_parents_closer_than_unrelated_terms(onto):
    rng = np.random.default_rng(0)
    used = rng.choice(len(onto), 300, replace=False)
    vocab = hpo_vocabulary(onto, used)
    assert set(used.tolist()) <= set(vocab.tolist())
    assert all(onto.ancestors(int(t)) <= set(vocab.tolist()) for t in used[:20])
    enc = HpoEncoder(len(onto), len(vocab), width=64)
    enc.init_from_ontology(onto, vocab, generator=torch.Generator().manual_seed(0))
    row = {t: i for i, t in enumerate(vocab.tolist())}
    table = torch.nn.functional.normalize(enc.table.detach(), dim=1)
    torch.testing.assert_close(enc.table.detach().norm(dim=1), torch.ones(len(vocab)))
    outputs = torch.nn.functional.normalize(enc.term_embeddings().detach(), dim=1)
    for emb, margin in ((table, 0.5), (outputs, 0.05)):
        near, far = [], []
        for t in used.tolist():
            if not onto.parents(t):
                continue
            near.append((emb[row[t]] @ emb[row[onto.parents(t)[0]]]).item())
            far.append((emb[row[t]] @ emb[row[_unrelated(onto, t, vocab, rng)]]).item())
        near, far = np.asarray(near), np.asarray(far)
        assert near.mean() > far.mean() + margin, (near.mean(), far.mean())
        assert (near > far).mean() > 0.95


def test_graph_init_is_seeded_and_shared_ancestry_grows_similarity(onto):
    vocab = hpo_vocabulary(onto, [onto.index["HP:0001250"], onto.index["HP:0002069"], onto.index["HP:0001631"]])
    a = ontology_init(onto, vocab, 32, torch.Generator().manual_seed(3))
    b = ontology_init(onto, vocab, 32, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    row = {t: i for i, t in enumerate(vocab.tolist())}
    seizure, gtc = row[onto.index["HP:0001250"]], row[onto.index["HP:0002069"]]   # a seizure and a kind of it
    asd = row[onto.index["HP:0001631"]]                                           # atrial septal defect
    assert (a[seizure] @ a[gtc]) > (a[seizure] @ a[asd]) + 0.3


def test_terms_outside_the_vocabulary_read_as_their_nearest_ancestor(onto):
    child = onto.index["HP:0002069"]
    parents = onto.parents(child)
    vocab = hpo_vocabulary(onto, parents)                  # the parent(s) and above, not the child
    lookup = nearest_vocabulary_term(onto, vocab)
    assert vocab[lookup[child]] in parents
    assert (lookup >= 0).all()                              # the root is in, so everything maps
    enc = HpoEncoder(len(onto), len(vocab), width=16, hidden=16)
    enc.init_from_ontology(onto, vocab)
    torch.testing.assert_close(enc.term_embeddings(torch.tensor([child])),
                               enc.term_embeddings(torch.tensor([int(vocab[lookup[child]])])))
    with pytest.raises(ValueError, match="expected an ontology"):
        enc.init_from_ontology(onto, vocab[:-1])


def test_from_phenotypes_and_patient_pooling(onto):
    ids = ["HP:0001250", "HP:0002069", "HP:0001631", "HP:0000707"]
    terms = [np.asarray(sorted(onto.index[t] for t in ids[:2]), np.int32), np.asarray([onto.index[ids[2]]], np.int32),
             np.zeros(0, np.int32)]
    data = PhenotypeData(["a", "b", "c"], terms, [np.asarray([onto.index[ids[3]]], np.int32), np.zeros(0, np.int32),
                                                  np.zeros(0, np.int32)], onto, {})
    torch.manual_seed(0)
    enc = HpoEncoder.from_phenotypes(data, width=16, hidden=32).eval()
    assert enc.config["n_ontology_terms"] == len(onto) and onto.index[ids[3]] in enc.vocab_terms.tolist()
    batch = torch.full((3, 2), -1, dtype=torch.long)
    batch[0, :2] = torch.as_tensor(terms[0])
    batch[1, 0] = int(terms[1][0])
    out = enc({TERMS: batch})
    one = enc.term_embeddings(torch.as_tensor(terms[1], dtype=torch.long))
    torch.testing.assert_close(out[1], one[0])
    rows = enc.lookup[torch.as_tensor(terms[0], dtype=torch.long)]
    torch.testing.assert_close(out[0], enc.mlp(enc.table[rows].mean(0)))
    torch.testing.assert_close(out[2], enc.mlp(torch.zeros(16)))     # no terms
