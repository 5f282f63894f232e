"""Registry, presets and the multimodal model: build from a preset, JSON config, rebuild, sizes."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import math

import pytest
import torch

from phenoclip.data.batch import DOSAGE, IMAGES, SIGNALS, TERMS, VALUES
from phenoclip.models.multimodal import MultimodalModel, build_model
from phenoclip.models.presets import PRESET_FIELDS, PRESETS, Preset, get_preset
from phenoclip.models.registry import DATA_ARGS, ENCODERS, build_encoder, encoder_from_config

HAVE_MAMBA = importlib.util.find_spec("phenoclip.models.mamba") is not None
MAMBA_ARCHS = {("gene", "mamba"), ("expr", "mamba")}

#: the sample cohort (phenoclip simulate defaults) as data shapes; HPO with the full ontology
SAMPLE_SHAPES = {
    "gene": {"n_variants": 2000},
    "expr": {"n_genes": 200},
    "mri": {"volume_shape": (32, 40, 32), "in_channels": 1},
    "signal": {"n_channels": 2, "length": 1000},
    "hpo": {"n_ontology_terms": 19034, "n_vocab": 1500},
}


def _skip_without_mamba(key):
    if key in MAMBA_ARCHS and not HAVE_MAMBA:
        pytest.skip("phenoclip.models.mamba (MambaEncoder) is not written yet")


def test_registry_and_presets_agree():
    assert set(ENCODERS) == set(PRESET_FIELDS) == set(DATA_ARGS)
    for key, cls in ENCODERS.items():
        params = inspect.signature(cls).parameters
        cfg_fields = {f.name for f in dataclasses.fields(PRESETS["tiny"].encoder_config(*key))}
        data = set(DATA_ARGS[key])
        assert cfg_fields <= set(params), (key, cfg_fields - set(params))
        assert not cfg_fields & data
        required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
        assert required <= data, (key, required - data)
    for p in PRESETS.values():
        assert set(p.default_arch) == {"gene", "expr", "mri", "signal", "hpo"}
        assert all((m, a) in ENCODERS for m, a in p.default_arch.items())


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_json_and_round_trip(name):
    p = PRESETS[name]
    text = json.dumps(dataclasses.asdict(p))
    assert Preset.from_dict(json.loads(text)) == p
    q = get_preset(name)
    q.mri_vit.width = 1
    assert PRESETS[name].mri_vit.width != 1          # get_preset hands out a copy
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")


@pytest.mark.parametrize("key", list(ENCODERS), ids=lambda k: "-".join(k))
def test_tiny_preset_is_modest_on_the_sample_cohort(key):
    _skip_without_mamba(key)
    torch.manual_seed(0)
    enc = build_encoder(*key, preset="tiny", data_shape=SAMPLE_SHAPES[key[0]])
    n_params = sum(p.numel() for p in enc.parameters())
    assert n_params < 1_000_000, f"{key}: {n_params} parameters"
    if enc.n_tokens is not None:
        assert enc.n_tokens <= 256, f"{key}: {enc.n_tokens} tokens is slow on 2 CPU cores"


@pytest.mark.parametrize("name", ["small", "paper"])
def test_bigger_presets_build(name):
    shapes = {**SAMPLE_SHAPES, "mri": {"volume_shape": (96, 96, 96), "in_channels": 1},
              "signal": {"n_channels": 2, "length": 2500}}
    with torch.device("meta"):                    # sizes only: nothing is allocated
        for key in ENCODERS:
            if key in MAMBA_ARCHS and not HAVE_MAMBA:
                continue
            enc = build_encoder(*key, preset=name, data_shape=shapes[key[0]])
            assert enc.width == PRESETS[name].encoder_config(*key).width
    assert PRESETS["paper"].mri_vit.width == 768 and PRESETS["paper"].mri_vit.depth == 12


def test_build_encoder_defaults_overrides_and_errors():
    enc = build_encoder("gene", preset="small", data_shape={"n_variants": 100}, patch=4)
    assert type(enc) is ENCODERS[("gene", PRESETS["small"].default_arch["gene"])]
    assert enc.config["patch"] == 4 and enc.n_tokens == 25
    tiny = build_encoder("gene", preset="tiny", data_shape={"n_variants": 100})
    assert type(tiny) is ENCODERS[("gene", "mlp")]  # tiny (CPU) presets use ContIG's dosage MLP
    mlp = build_encoder("expr", "mlp", "tiny", {"n_genes": 30}, input_key="pgs")
    assert mlp.config["n_features"] == 30 and mlp({"pgs": torch.randn(4, 30)}).shape == (4, 64)
    with pytest.raises(ValueError, match="known"):
        build_encoder("gene", "cnn", "tiny", {"n_variants": 10})
    with pytest.raises(ValueError, match="lacks n_variants"):
        build_encoder("gene", "transformer", "tiny", {"n_genes": 10})
    with pytest.raises(ValueError, match="no argument"):
        build_encoder("gene", "transformer", "tiny", {"n_variants": 10}, widht=8)
    with pytest.raises(ValueError, match="does not divide"):
        build_encoder("mri", "vit", "paper", SAMPLE_SHAPES["mri"])


SMALL_SHAPES = {
    "gene": {"n_variants": 40},
    "expr": {"n_genes": 20},
    "mri": {"volume_shape": (16, 16, 8), "in_channels": 1},
    "signal": {"n_channels": 2, "length": 128},
    "hpo": {"n_ontology_terms": 12, "n_vocab": 10},
}


def _batch(b: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "gene": {DOSAGE: torch.randint(-1, 3, (b, 40), generator=g).float()},
        "expr": {VALUES: torch.randn(b, 20, generator=g)},
        "mri": {IMAGES: torch.randn(b, 1, 16, 16, 8, generator=g)},
        "signal": {SIGNALS: torch.randn(b, 2, 128, generator=g)},
        "hpo": {TERMS: torch.tensor([[0, 4, -1], [9, 1, 2], [3, -1, -1], [-1, -1, -1]])},
    }


def _tiny_model(**kw) -> MultimodalModel:
    archs = {"expr": "mlp", "gene": "transformer"}
    overrides = {"mri": {"patch": (8, 8, 4)}}
    return build_model(SMALL_SHAPES, "tiny", archs=archs, overrides=overrides, **kw)


def test_multimodal_model_encodes_into_one_normalised_space():
    torch.manual_seed(0)
    model = _tiny_model().eval()
    assert model.modalities == ["gene", "expr", "mri", "signal", "hpo"]
    assert math.isclose(model.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    out = model(_batch())
    assert set(out) == set(model.modalities)
    for m, z in out.items():
        assert z.shape == (4, PRESETS["tiny"].embed_dim)
        torch.testing.assert_close(z.norm(dim=-1), torch.ones(4))
    raw = model.encode("mri", _batch()["mri"], normalize=False)
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), out["mri"])
    terms = model.encode_terms(torch.tensor([0, 4]))
    assert terms.shape == (2, PRESETS["tiny"].embed_dim)
    one_term = model.encode("hpo", {TERMS: torch.tensor([[4, -1]])})
    torch.testing.assert_close(one_term[0], terms[1])   # a one-term patient sits on its term
    assert set(model({"mri": _batch()["mri"]})) == {"mri"}           # modalities absent from a batch are skipped


def test_multimodal_model_rebuilds_from_json_config():
    torch.manual_seed(0)
    model = _tiny_model(embed_dim=16).eval()
    cfg = json.loads(json.dumps(model.config))
    again = MultimodalModel.from_config(cfg)
    a, b = model.state_dict(), again.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    again.load_state_dict(a)
    again.eval()
    batch = _batch()
    for m in model.modalities:
        torch.testing.assert_close(again.encode(m, batch[m]), model.encode(m, batch[m]))
    assert again.archs == model.archs and again.embed_dim == 16


def test_multimodal_model_rejects_mismatched_archs():
    enc = encoder_from_config("expr", "mlp", {"n_features": 5, "width": 8, "hidden": [8]})
    with pytest.raises(ValueError, match="not the 'mamba'"):
        MultimodalModel({"expr": enc}, {"expr": "mamba"}, 8)
    with pytest.raises(ValueError, match="do not match"):
        MultimodalModel({"expr": enc}, {"gene": "mlp"}, 8)
    with pytest.raises(ValueError, match="unknown modalities"):
        build_model({"pgs": {"n_features": 3}})
