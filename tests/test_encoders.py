"""Built-in perceivers on tiny random backbones: each level is the backbone's own block output,
final-normed and summarised, checked against an independent computation (forward hooks on the
blocks, or a hand-run encoder), plus preprocessing of every media form and file type."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from torch import nn
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, WhisperForConditionalGeneration

from epalm.data.media import load_audio, load_clip, load_image, read_video, segment_indices
from epalm.encoders import available_perceivers, build_perceiver, get_perceiver_class
from epalm.encoders.audio import real_length
from epalm.testing.perceivers import TINY_WHISPER, sample_media, tiny_perceiver_kwargs
from epalm.zoo import config_from_dict

SMALL = {
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
}
TINY_AST = {
    "model_type": "audio-spectrogram-transformer",
    **SMALL,
    "num_mel_bins": 32,
    "max_length": 64,
    "patch_size": 16,
}
TINY_TIMM = {"embed_dim": 32, "depth": 3, "num_heads": 2, "img_size": 32, "patch_size": 8}

# Every built-in: (registry name, kwargs, raw media).
BUILTINS = {
    "vit": ("image", {"model_config": {"model_type": "vit", **SMALL}}, "image"),
    "dinov2": (
        "image",
        {"model_config": {"model_type": "dinov2", **SMALL}, "image_size": 32},
        "image",
    ),
    "clip": ("image", {"model_config": {"model_type": "clip", "vision_config": SMALL}}, "image"),
    "siglip": (
        "image",
        {"model_config": {"model_type": "siglip", "vision_config": SMALL}},
        "image",
    ),
    "timm": ("timm-image", {"model": "vit_base_patch16_224", "model_kwargs": TINY_TIMM}, "image"),
    "timesformer": (
        "video",
        {"model_config": {"model_type": "timesformer", "num_frames": 4, **SMALL}},
        "video",
    ),
    "videomae": (
        "video",
        {"model_config": {"model_type": "videomae", "num_frames": 4, **SMALL}},
        "video",
    ),
    "frames": (*tiny_perceiver_kwargs("video"), "video"),
    "ast": ("ast", {"model_config": TINY_AST}, "audio"),
    "whisper": (*tiny_perceiver_kwargs("audio"), "audio"),
}


def build(key: str, **overrides):
    name, kwargs, _ = BUILTINS[key]
    return build_perceiver(name, **{**kwargs, **overrides})


def batch_of(perceiver, modality: str, size: int = 2):
    return perceiver.collate(
        [perceiver.preprocess(sample_media(modality, seed=i)) for i in range(size)]
    )


def randomize_norms(module: nn.Module) -> None:
    """Random LayerNorm gains and biases: at init (1, 0) a norm applied twice looks like once."""
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, nn.LayerNorm):
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.normal_(0, 0.5)


def block_outputs(model: nn.Module, blocks: nn.ModuleList, **inputs) -> list[torch.Tensor]:
    """Each block's raw output, recorded by forward hooks while the HF model runs as usual."""
    outputs = []

    def record(module, args, output):
        outputs.append(output[0] if isinstance(output, tuple) else output)

    hooks = [block.register_forward_hook(record) for block in blocks]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def expected_levels(backbone, blocks, norm, rule, **inputs) -> torch.Tensor:
    normed = [norm(h) for h in block_outputs(backbone, blocks, **inputs)]
    return torch.stack([h[:, 0] if rule == "cls" else h.mean(1) for h in normed], dim=1)


# --- every backbone's levels are its blocks, final-normed and summarised ------------------------
@pytest.mark.parametrize(
    ("key", "blocks", "norm", "rule"),
    [
        ("vit", "layers", "layernorm", "cls"),
        ("dinov2", "encoder.layer", "layernorm", "cls"),
        ("clip", "encoder.layers", "post_layernorm", "cls"),
        ("siglip", "encoder.layers", "post_layernorm", "mean"),
        ("timesformer", "encoder.layer", "layernorm", "cls"),
        ("videomae", "encoder.layer", None, "mean"),  # mean-pooling VideoMAE has no final norm
        ("ast", "layers", "layernorm", "cls"),
    ],
)
def test_hf_levels_are_final_normed_block_summaries(key, blocks, norm, rule):
    perceiver = build(key)
    randomize_norms(perceiver)
    batch = batch_of(perceiver, BUILTINS[key][2])
    out = perceiver(**batch)

    backbone = perceiver.backbone
    block_list = backbone.get_submodule(blocks)
    norm_layer = nn.Identity() if norm is None else backbone.get_submodule(norm)
    assert perceiver.summary == rule
    assert perceiver.num_levels == len(block_list) == 3
    assert out.shape == (2, 3, 32)
    want = expected_levels(backbone, block_list, norm_layer, rule, **batch)
    torch.testing.assert_close(out, want)


def test_clip_keeps_only_the_vision_tower():
    perceiver = build("clip")
    assert type(perceiver.backbone).__name__ == "CLIPVisionModel"
    assert not any("text" in name for name, _ in perceiver.named_parameters())
    assert tuple(perceiver.image_mean) == pytest.approx((0.4815, 0.4578, 0.4082), abs=1e-4)


def test_image_size_other_than_the_backbones_interpolates_positions():
    perceiver = build("vit", image_size=24)
    batch = batch_of(perceiver, "image")
    assert batch["pixel_values"].shape == (2, 3, 24, 24)
    backbone = perceiver.backbone
    want = expected_levels(
        backbone, backbone.layers, backbone.layernorm, "cls", **batch, interpolate_pos_encoding=True
    )
    torch.testing.assert_close(perceiver(**batch), want)


def test_dinov2_defaults_to_224_not_its_config_518():
    config = {"model_type": "dinov2", **SMALL, "image_size": 518}
    assert build_perceiver("image", model_config=config).image_size == 224


def test_summary_and_final_norm_options():
    batch = batch_of(build("vit"), "image")
    backbone = build("vit").backbone
    raw = block_outputs(backbone, backbone.layers, **batch)
    plain = build("vit", final_norm=False, summary="mean")
    torch.testing.assert_close(plain(**batch), torch.stack([h.mean(1) for h in raw], dim=1))
    assert build("siglip", summary="cls").summary == "cls"
    with pytest.raises(ValueError, match="summary must be"):
        build("vit", summary="max")


def test_timm_vit_levels_match_a_manual_pass():
    perceiver = build("timm")
    assert (perceiver.num_levels, perceiver.hidden_size, perceiver.image_size) == (3, 32, 32)
    batch = batch_of(perceiver, "image")
    vit = perceiver.backbone
    with torch.no_grad():
        x = vit.norm_pre(vit._pos_embed(vit.patch_embed(batch["pixel_values"])))
        want = []
        for block in vit.blocks:
            x = block(x)
            want.append(vit.norm(x)[:, 0])
    torch.testing.assert_close(perceiver(**batch), torch.stack(want, dim=1))


@pytest.mark.parametrize("suffix", ["safetensors", "pt"])
def test_timm_loads_a_local_checkpoint(tmp_path, suffix):
    source = build("timm")
    path = tmp_path / f"vit.{suffix}"
    state = {k: v.contiguous() for k, v in source.backbone.state_dict().items()}
    if suffix == "safetensors":
        from safetensors.torch import save_file

        save_file(state, path)
    else:
        torch.save({"state_dict": state}, path)
    loaded = build("timm", seed=1, checkpoint=str(path))
    batch = batch_of(source, "image")
    torch.testing.assert_close(loaded(**batch), source(**batch))
    assert not torch.allclose(build("timm", seed=1)(**batch), source(**batch))


def test_clip_from_a_full_checkpoint_directory(tmp_path):
    torch.manual_seed(0)
    full = CLIPModel(CLIPConfig(vision_config=SMALL, text_config={**SMALL, "vocab_size": 99}))
    full.save_pretrained(tmp_path)
    perceiver = build_perceiver("image", model=str(tmp_path))
    assert type(perceiver.backbone).__name__ == "CLIPVisionModel"
    weight = full.vision_model.embeddings.patch_embedding.weight
    torch.testing.assert_close(perceiver.backbone.embeddings.patch_embedding.weight, weight)
    # normalisation comes from the checkpoint's preprocessor config when it has one
    CLIPImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]).save_pretrained(
        tmp_path
    )
    perceiver = build_perceiver("image", model=str(tmp_path))
    assert tuple(perceiver.image_mean) == pytest.approx((0.1, 0.2, 0.3))


# --- frames: any image perceiver serves for video -----------------------------------------------
def test_frames_perceiver_is_the_mean_over_frames_of_its_image_perceiver():
    perceiver = build("frames")
    clip = sample_media("video")
    out = perceiver.encode([clip])
    image = perceiver.image
    frames = [clip[i] for i in segment_indices(len(clip), 4)]
    per_frame = image.encode(frames)  # [4 frames, levels, hidden]
    assert out.shape == (1, 4, 32)
    torch.testing.assert_close(out[0], per_frame.mean(0))
    assert not torch.allclose(
        per_frame[0], per_frame[1]
    )  # frames differ, so the mean means something


def test_mean_plus_delta_pooling_tells_a_clip_from_its_reverse():
    name, kwargs = tiny_perceiver_kwargs("video")
    perceiver = build_perceiver(name, **{**kwargs, "pool": "mean+delta"})
    assert perceiver.hidden_size == 2 * perceiver.image.hidden_size == 64
    clip = sample_media("video")[:4]  # 4 frames, each a segment of its own
    forward, backward = perceiver.encode([clip, clip[::-1].copy()])
    width = perceiver.image.hidden_size
    torch.testing.assert_close(forward[:, :width], backward[:, :width])  # the same mean
    torch.testing.assert_close(forward[:, width:], -backward[:, width:])  # reversed change
    per_frame = perceiver.image.encode(list(clip))
    torch.testing.assert_close(forward[:, width:], per_frame[2:].mean(0) - per_frame[:2].mean(0))
    assert forward[:, width:].abs().max() > 1e-3


@pytest.mark.parametrize("key", ["frames", "timesformer"])
def test_training_augments_every_frame_alike(key):
    perceiver = build(key)
    still = np.repeat(sample_media("image")[None], 5, axis=0)  # 5 identical frames
    pixels = perceiver.preprocess(still, train=True)["pixel_values"]
    assert pixels.shape == (4, 3, 32, 32)
    for frame in pixels[1:]:
        torch.testing.assert_close(frame, pixels[0])
    assert not torch.allclose(perceiver.preprocess(still, train=True)["pixel_values"], pixels)


# --- Whisper on the clip's real length ----------------------------------------------------------
def manual_whisper(encoder, features: torch.Tensor) -> torch.Tensor:
    """Whisper's encoder by hand: convs, the first n positions, layers, final norm, time mean."""
    gelu = nn.functional.gelu
    with torch.no_grad():
        h = gelu(encoder.conv2(gelu(encoder.conv1(features)))).permute(0, 2, 1)
        h = h + encoder.embed_positions.weight[: h.shape[1]]
        levels = []
        for layer in encoder.layers:
            h = layer(h, None)
            levels.append(encoder.layer_norm(h).mean(1))
    return torch.stack(levels, dim=1)


def test_whisper_runs_real_length_like_a_hand_run_encoder():
    perceiver = build("whisper")
    randomize_norms(perceiver)
    t = np.arange(32_000) / 16_000
    two_seconds = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    features = perceiver.preprocess(two_seconds)["input_features"]
    assert features.shape == (80, 200)  # 10 ms hop, no padding to 30 s
    out = perceiver(input_features=features[None])
    assert out.shape == (1, 4, 32)
    # measured max abs difference: 0 (same modules, same order); the tolerance is float noise
    torch.testing.assert_close(
        out, manual_whisper(perceiver.backbone, features[None]), atol=1e-6, rtol=1e-5
    )


def test_real_length_restores_the_encoder_even_on_error():
    encoder = build("whisper").backbone
    table = encoder.embed_positions
    with pytest.raises(RuntimeError, match="boom"), real_length(encoder, 200):
        assert encoder.embed_positions.num_embeddings == 100
        raise RuntimeError("boom")
    assert encoder.embed_positions is table and encoder.config.max_source_positions == 1500
    with torch.no_grad():
        assert encoder(torch.zeros(1, 80, 3000)).last_hidden_state.shape == (1, 1500, 32)
        with pytest.raises(ValueError, match="expects the mel input features to be of length 3000"):
            encoder(torch.zeros(1, 80, 200))


def test_whisper_serves_clips_of_different_lengths_from_many_threads_at_once():
    """The demo serves one model from several threads; real_length changes the shared encoder
    while it runs, so concurrent clips of other lengths must not see each other's change."""
    from concurrent.futures import ThreadPoolExecutor

    perceiver = build("whisper").eval()
    clips = [
        perceiver.preprocess(np.zeros(16_000 * seconds, np.float32) + 0.01 * seconds)[
            "input_features"
        ][None]
        for seconds in (1, 2, 3, 4)
    ] * 4
    with torch.no_grad():
        alone = [perceiver(input_features=c) for c in clips]
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda c: perceiver(input_features=c), clips))
    for a, b in zip(alone, together, strict=True):
        torch.testing.assert_close(a, b)


def test_whisper_lengths_are_even_and_capped():
    perceiver = build("whisper", max_seconds=2.0)
    assert perceiver.preprocess(np.zeros(8_161, np.float32))["input_features"].shape[-1] == 52
    assert perceiver.preprocess(np.zeros(16_000 * 5, np.float32))["input_features"].shape[-1] == 200
    with pytest.raises(ValueError, match="exceeds"):
        build("whisper", max_seconds=31)


def test_whisper_collate_pads_with_the_extractors_silence():
    perceiver = build("whisper")
    short, long = sample_media("audio", seed=0), np.tile(sample_media("audio", seed=1), 2)
    batch = perceiver.collate([perceiver.preprocess(short), perceiver.preprocess(long)])
    assert batch["input_features"].shape == (2, 80, 200)
    assert batch["attention_mask"].sum(1).tolist() == [100, 200]
    # what the extractor makes of the same audio zero-padded (frames clear of the clip's edge)
    padded = perceiver.preprocess(np.pad(short, (0, 16_000)))["input_features"]
    torch.testing.assert_close(batch["input_features"][0, :, 103:], padded[:, 103:])
    # the summary averages the real positions only: one per two mel frames
    out = perceiver(**batch)
    levels = perceiver.hidden_states(batch["input_features"])
    torch.testing.assert_close(out[0], torch.stack([h[0, :50].mean(0) for h in levels]))
    torch.testing.assert_close(out[1], torch.stack([h[1].mean(0) for h in levels]))


def test_mean_plus_delta_summary_adds_the_later_half_minus_the_earlier_over_real_positions():
    perceiver = build("whisper", summary="mean+delta")
    assert perceiver.hidden_size == 2 * 32
    short, long = sample_media("audio", seed=0), np.tile(sample_media("audio", seed=1), 2)
    batch = perceiver.collate([perceiver.preprocess(short), perceiver.preprocess(long)])
    out = perceiver(**batch)
    assert out.shape == (2, 4, 64)
    levels = perceiver.hidden_states(batch["input_features"])
    for row, real in ((0, 50), (1, 100)):  # encoder positions of real audio
        expected = torch.stack(
            [
                torch.cat([h[row, :real].mean(0), h[row, real // 2 : real].mean(0)
                           - h[row, : real // 2].mean(0)])
                for h in levels
            ]
        )  # fmt: skip
        torch.testing.assert_close(out[row], expected)


def test_whisper_from_a_full_checkpoint_directory(tmp_path):
    torch.manual_seed(0)
    full = WhisperForConditionalGeneration(config_from_dict(TINY_WHISPER))
    full.save_pretrained(tmp_path)
    perceiver = build_perceiver("whisper", model=str(tmp_path))
    want = full.model.encoder.state_dict()
    for name, value in perceiver.backbone.state_dict().items():
        torch.testing.assert_close(value, want[name])


# --- raw media of every form -------------------------------------------------------------------
def test_load_image_reads_every_form(tmp_path):
    rgb = sample_media("image")  # [48, 40, 3]
    rgba = np.concatenate([rgb, np.full((48, 40, 1), 7, np.uint8)], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    expected = torch.from_numpy(rgb).permute(2, 0, 1)
    for media in (
        rgb,
        Image.fromarray(rgba),
        rgba,
        expected,
        tmp_path / "a.png",
        str(tmp_path / "a.png"),
    ):
        torch.testing.assert_close(load_image(media), expected)
    gray = rgb[..., 0]
    for media in (Image.fromarray(gray), gray, torch.from_numpy(gray)[None]):
        image = load_image(media)
        assert image.shape == (3, 48, 40) and torch.equal(image[0], image[2])


def test_jpeg_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to display"
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "a.jpg", exif=exif)
    assert load_image(tmp_path / "a.jpg").shape == (3, 40, 20)


def test_image_preprocessing_resizes_crops_and_normalises():
    perceiver = build("vit")  # 32 px, ImageNet mean and std
    # 64 x 32: the shorter side is already 32; the centre crop drops the white bands
    image = np.zeros((64, 32, 3), np.uint8)
    image[:16], image[48:] = 255, 255
    pixels = perceiver.preprocess(image)["pixel_values"]
    mean, std = torch.tensor(perceiver.image_mean), torch.tensor(perceiver.image_std)
    torch.testing.assert_close(pixels, (-mean / std)[:, None, None].expand(3, 32, 32))
    random = sample_media("image")
    assert torch.equal(
        perceiver.preprocess(random)["pixel_values"], perceiver.preprocess(random)["pixel_values"]
    )
    a, b = (perceiver.preprocess(random, train=True)["pixel_values"] for _ in range(2))
    assert a.shape == (3, 32, 32) and not torch.equal(a, b)


def test_segment_sampling_takes_middle_frames_and_stays_in_segments():
    assert segment_indices(12, 4) == [1, 4, 7, 10]
    assert segment_indices(6, 4) == [0, 2, 3, 5]
    assert segment_indices(4, 4) == [0, 1, 2, 3]
    assert segment_indices(2, 4) == [0, 0, 1, 1]  # too few frames: repeat in order
    draws = torch.tensor([segment_indices(12, 4, train=True) for _ in range(200)])
    starts = torch.tensor([0, 3, 6, 9])
    assert ((draws >= starts) & (draws < starts + 3)).all()
    assert all(len(set(column.tolist())) == 3 for column in draws.T)  # every frame of a segment


def test_clips_from_arrays_tensors_and_frame_lists():
    video = sample_media("video")  # [6, 40, 48, 3]
    want = torch.from_numpy(video[[0, 2, 3, 5]]).permute(0, 3, 1, 2)
    tensor = torch.from_numpy(video).permute(0, 3, 1, 2)
    for media in (video, tensor, list(video), [Image.fromarray(f) for f in video]):
        torch.testing.assert_close(load_clip(media, 4), want)


@pytest.mark.parametrize("suffix", ["mp4", "mkv"])  # mkv headers carry no frame count
def test_read_video_decodes_segment_sampled_frames(tmp_path, suffix):
    path = tmp_path / f"clip.{suffix}"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for i in range(12):  # frame i is a flat grey of level 20 * i
            frame = av.VideoFrame.from_ndarray(
                np.full((32, 48, 3), 20 * i, np.uint8), format="rgb24"
            )
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    frames = read_video(path, 4)
    assert frames.shape == (4, 32, 48, 3) and frames.dtype == np.uint8
    levels = frames.reshape(4, -1).mean(1)
    np.testing.assert_allclose(levels, [20, 80, 140, 200], atol=5)  # frames 1, 4, 7, 10
    pixels = build("timesformer").preprocess(path)["pixel_values"]
    assert pixels.shape == (4, 3, 32, 32)


def tone(rate: int, seconds: float = 0.5, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def peak_hz(wave: np.ndarray, rate: int = 16_000) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(wave)))) * rate / len(wave)


def test_load_audio_reads_files_dicts_and_arrays(tmp_path):
    stereo = np.stack([tone(8_000), tone(8_000)], axis=1)
    soundfile.write(tmp_path / "a.wav", stereo, 8_000)
    from_file = load_audio(tmp_path / "a.wav")
    from_dict = load_audio({"array": tone(8_000), "sampling_rate": 8_000})
    for wave in (from_file, from_dict):  # resampled to 16 kHz, still 440 Hz
        assert wave.dtype == np.float32 and wave.shape == (8_000,)
        assert peak_hz(wave) == pytest.approx(440, abs=2)
    np.testing.assert_allclose(from_file, from_dict, atol=1e-3)  # 16-bit WAV quantisation
    assert load_audio(tone(16_000)).shape == (8_000,)
    assert load_audio(stereo.T).shape == (4_000,)  # channels first works too


def test_ast_features_have_the_backbones_length_and_bins(tmp_path):
    soundfile.write(tmp_path / "a.wav", tone(16_000), 16_000)
    perceiver = build("ast")
    assert perceiver.preprocess(tmp_path / "a.wav")["input_values"].shape == (64, 32)


# --- every built-in: config round trip, frozen ---------------------------------------------------
@pytest.mark.parametrize("key", list(BUILTINS))
def test_config_rebuilds_an_identical_frozen_perceiver(key):
    name, _, modality = BUILTINS[key]
    perceiver = build(key)
    config = json.loads(json.dumps(perceiver.config()))  # what a checkpoint stores
    rebuilt = build_perceiver(name, **config)
    batch = batch_of(perceiver, modality)
    torch.testing.assert_close(rebuilt(**batch), perceiver(**batch), rtol=0, atol=0)
    assert perceiver.modality == BUILTINS[key][2]

    assert not any(p.requires_grad for p in perceiver.parameters())
    perceiver.train()
    assert not any(m.training for m in perceiver.modules())


def test_registry_lists_builtins_and_suggests_close_names():
    assert {"image", "timm-image", "video", "frames", "ast", "whisper"} <= set(
        available_perceivers()
    )
    assert get_perceiver_class("whisper").__name__ == "WhisperPerceiver"
    with pytest.raises(KeyError, match=r"unknown perceiver 'vidoe'.*Did you mean 'video'"):
        build_perceiver("vidoe")
