"""Converters: tiny trees in each dataset's official format become exactly the manifests they imply."""

import json
import logging
import re
import shlex

import pytest

from epalm.cli import main
from epalm.data.converters import ConverterError, available_converters, prepare
from epalm.data.manifest import read_manifest


def at(path):
    """``path`` as a pattern for ``pytest.raises(match=...)``."""
    return re.escape(str(path))


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_text(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())  # bytes: keep the \r\n of files made on Windows


def warnings(caplog):
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def touch_media(root, paths):
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).touch()


def prepared(name, root, out, **options):
    """The manifests ``prepare`` writes, as {file name: [sample JSON]}.

    Also: every media path resolves under root, and once those files exist ``check_media``
    finds them all.
    """
    paths = prepare(name, root, out, **options)
    assert all(path.parent == out for path in paths)
    manifests = {path.name: read_manifest(path) for path in paths}
    for sample in (s for samples in manifests.values() for s in samples):
        for media in sample.media_paths:
            assert media.resolve().is_relative_to(root.resolve())
            media.parent.mkdir(parents=True, exist_ok=True)
            media.touch()
    assert prepare(name, root, out, check_media=True, **options) == paths
    return {name: [s.to_json() for s in samples] for name, samples in manifests.items()}


@pytest.fixture
def root(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def out(tmp_path):
    return tmp_path / "manifests"


def test_available_converters():
    assert available_converters() == [
        "audiocaps",
        "clotho",
        "coco",
        "gqa",
        "msrvtt",
        "msrvtt-qa",
        "msvd-qa",
        "vqav2",
    ]


# --- COCO (Karpathy split) ---


def karpathy_image(cocoid, split, folder, captions):
    return {
        "filepath": folder,
        "filename": f"COCO_{folder}_{cocoid:012d}.jpg",
        "imgid": cocoid % 7,
        "split": split,
        "sentids": list(range(len(captions))),
        "sentences": [{"tokens": c.lower().split(), "raw": c, "sentid": 0} for c in captions],
        "cocoid": cocoid,
    }


@pytest.fixture
def coco(root):
    images = [
        karpathy_image(391895, "test", "val2014", ["A man riding a bike. ", "A cyclist.\n"]),
        karpathy_image(522418, "restval", "val2014", ["A woman cutting a cake."]),
        karpathy_image(57870, "train", "train2014", ["A restaurant.", "Chairs and tables."]),
        karpathy_image(184613, "val", "val2014", ["A child holding an umbrella."]),
    ]
    write_json(root / "dataset_coco.json", {"images": images, "dataset": "coco"})
    return root


def coco_sample(cocoid, split, karpathy_split, media, captions):
    return {
        "id": f"coco-{cocoid}",
        "split": split,
        "modality": "image",
        "media": media,
        "captions": captions,
        "image_id": cocoid,
        "karpathy_split": karpathy_split,
    }


def test_coco(coco, out):
    assert prepared("coco", coco, out) == {
        "train.jsonl": [
            coco_sample(
                522418,
                "train",
                "restval",
                "../data/val2014/COCO_val2014_000000522418.jpg",
                ["A woman cutting a cake."],
            ),
            coco_sample(
                57870,
                "train",
                "train",
                "../data/train2014/COCO_train2014_000000057870.jpg",
                ["A restaurant.", "Chairs and tables."],
            ),
        ],
        "val.jsonl": [
            coco_sample(
                184613,
                "val",
                "val",
                "../data/val2014/COCO_val2014_000000184613.jpg",
                ["A child holding an umbrella."],
            )
        ],
        "test.jsonl": [
            coco_sample(
                391895,
                "test",
                "test",
                "../data/val2014/COCO_val2014_000000391895.jpg",
                ["A man riding a bike.", "A cyclist."],
            )
        ],
    }


def test_manifests_default_to_the_root(coco):
    paths = prepare("coco", coco)
    assert paths == [coco / "train.jsonl", coco / "val.jsonl", coco / "test.jsonl"]
    assert read_manifest(paths[2])[0].media == ["val2014/COCO_val2014_000000391895.jpg"]


def test_media_pattern(coco, out):
    prepare("coco", coco, out, media_pattern="images/{cocoid}.jpg")
    assert read_manifest(out / "val.jsonl")[0].media == ["../data/images/184613.jpg"]


def test_media_pattern_with_unknown_field(coco):
    with pytest.raises(
        ConverterError, match=r"dataset_coco.json: images\[0\].*\{nope\}.*\{cocoid\}"
    ):
        prepare("coco", coco, media_pattern="{nope}.jpg")


def test_missing_media_is_counted_in_a_warning(coco, out, caplog):
    touch_media(coco, ["val2014/COCO_val2014_000000391895.jpg"])
    prepare("coco", coco, out)
    warning = warnings(caplog)
    assert "3 of 4 media files are missing" in warning
    assert str(coco / "val2014/COCO_val2014_000000522418.jpg") in warning
    assert str(coco / "val2014/COCO_val2014_000000391895.jpg") not in warning
    assert "--check-media" in warning
    assert len(read_manifest(out / "train.jsonl")) == 2  # written all the same


def test_no_warning_when_the_media_are_there(coco, out, caplog):
    prepared("coco", coco, out)
    caplog.clear()
    prepare("coco", coco, out)
    assert warnings(caplog) == ""


def test_check_media_lists_every_missing_file_and_writes_no_manifest(root, out):
    images = [karpathy_image(i, "train", "train2014", [f"caption {i}"]) for i in range(25)]
    write_json(root / "dataset_coco.json", {"images": images})
    touch_media(root, ["train2014/COCO_train2014_000000000007.jpg"])
    missing = [root / f"train2014/COCO_train2014_{i:012d}.jpg" for i in range(25) if i != 7]
    listing = out / "missing_media.txt"
    with pytest.raises(ConverterError) as err:
        prepare("coco", root, out, check_media=True)
    message = str(err.value)
    assert f"24 of 25 media files are missing, all listed in {listing}" in message
    assert "no manifest written" in message
    assert all(str(path) in message for path in missing[:20])
    assert str(missing[20]) not in message  # the message names the first 20, the file all
    assert listing.read_text().splitlines() == [str(path) for path in missing]
    assert not list(out.glob("*.jsonl"))
    touch_media(root, [path.relative_to(root) for path in missing])
    assert prepare("coco", root, out, check_media=True) == [out / "train.jsonl"]
    assert not listing.exists()  # a list from an earlier run would be stale


def test_missing_annotation_file_names_the_expected_path(root):
    with pytest.raises(ConverterError, match=rf"coco: {at(root / 'dataset_coco.json')}: not found"):
        prepare("coco", root)


def test_malformed_entry_names_file_and_entry(coco):
    path = coco / "dataset_coco.json"
    data = json.loads(path.read_text())
    del data["images"][1]["cocoid"]
    write_json(path, data)
    with pytest.raises(ConverterError, match=rf"{at(path)}: images\[1\]: missing 'cocoid'"):
        prepare("coco", coco)


def test_malformed_nested_entry_names_it(coco):
    path = coco / "dataset_coco.json"
    data = json.loads(path.read_text())
    data["images"][2]["sentences"][1]["raw"] = " "
    write_json(path, data)
    with pytest.raises(ConverterError, match=r"images\[2\]: sentences\[1\]: 'raw' is empty"):
        prepare("coco", coco)


def test_invalid_json_names_file_and_line(root):
    write_text(root / "dataset_coco.json", '{"images": [\n{,}]}')
    with pytest.raises(ConverterError, match=r"dataset_coco.json: not valid JSON .* line 2"):
        prepare("coco", root)


def test_unknown_split_is_an_error(coco):
    path = coco / "dataset_coco.json"
    data = json.loads(path.read_text())
    data["images"][0]["split"] = "holdout"
    write_json(path, data)
    with pytest.raises(ConverterError, match=r"images\[0\]: unknown split 'holdout'"):
        prepare("coco", coco)


def test_ids_are_unique_across_splits(coco):
    path = coco / "dataset_coco.json"
    data = json.loads(path.read_text())
    data["images"][3]["cocoid"] = 391895
    write_json(path, data)
    with pytest.raises(ConverterError, match="two samples have the id 'coco-391895'"):
        prepare("coco", coco)


def test_unknown_dataset():
    with pytest.raises(ConverterError, match="unknown dataset 'imagenet'; known: audiocaps"):
        prepare("imagenet", ".")


# --- VQAv2 ---


def vqa_files(root, subtype, questions):
    """Official question and annotation files; ``questions``: (qid, image, text, answers)."""
    write_json(
        root / f"v2_OpenEnded_mscoco_{subtype}_questions.json",
        {
            "info": {},
            "task_type": "Open-Ended",
            "data_type": "mscoco",
            "license": {},
            "data_subtype": subtype,
            "questions": [
                {"image_id": image, "question": text, "question_id": qid}
                for qid, image, text, _ in questions
            ],
        },
    )
    if questions[0][3] is None:
        return
    annotations = [
        {
            "question_type": "what is",
            "multiple_choice_answer": answers[0],
            "answers": [
                {"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                for i, a in enumerate(answers)
            ],
            "image_id": image,
            "answer_type": "other",
            "question_id": qid,
        }
        for qid, image, _, answers in reversed(questions)  # joined by id, not by position
    ]
    write_json(
        root / f"v2_mscoco_{subtype}_annotations.json",
        {"info": {}, "license": {}, "data_subtype": subtype, "annotations": annotations},
    )


NET = ["net", "net", "netting", "net", "mesh", "net", "net", "nets", "net", "net"]
YES = ["yes"] * 9 + ["no"]
TWO = ["2", "2", "two", "2", "2", "3", "2", "2", "2", "2"]


@pytest.fixture
def vqav2(root):
    vqa_files(
        root,
        "train2014",
        [(458752000, 458752, "What is this photo taken looking through?", NET)],
    )
    vqa_files(
        root,
        "val2014",
        [
            (262148000, 262148, "Is the sky blue?", YES),
            (262148001, 262148, "How many people?", TWO),
        ],
    )
    vqa_files(root, "test2015", [(1000, 1, "What color is the bus?", None)])
    return root


def vqa_sample(qid, image, split, media, question, answers):
    return {
        "id": f"vqav2-{qid}",
        "split": split,
        "modality": "image",
        "media": media,
        "question": question,
        "answers": answers,
        "question_id": qid,
        "image_id": image,
        "answer_type": "other",
        "question_type": "what is",
        "multiple_choice_answer": answers[0],
    }


def test_vqav2(vqav2, out):
    val_image = "../data/val2014/COCO_val2014_000000262148.jpg"
    assert prepared("vqav2", vqav2, out) == {
        "train.jsonl": [
            vqa_sample(
                458752000,
                458752,
                "train",
                "../data/train2014/COCO_train2014_000000458752.jpg",
                "What is this photo taken looking through?",
                NET,
            )
        ],
        "val.jsonl": [
            vqa_sample(262148000, 262148, "val", val_image, "Is the sky blue?", YES),
            vqa_sample(262148001, 262148, "val", val_image, "How many people?", TWO),
        ],
    }  # no test.jsonl: the test questions have no answers


def test_vqav2_converts_the_splits_present(vqav2, out):
    for name in ("questions", "annotations"):
        next(vqav2.glob(f"*train2014_{name}.json")).unlink()
    assert [p.name for p in prepare("vqav2", vqav2, out)] == ["val.jsonl"]


def test_vqav2_split_with_a_missing_file(vqav2):
    (vqav2 / "v2_mscoco_val2014_annotations.json").unlink()
    expected = vqav2 / "v2_mscoco_val2014_annotations.json"
    with pytest.raises(ConverterError, match=rf"vqav2: {at(expected)}: not found .*val split"):
        prepare("vqav2", vqav2)


def test_vqav2_without_any_file_names_the_expected_paths(root):
    with pytest.raises(ConverterError, match="no annotation files found; expected ") as err:
        prepare("vqav2", root)
    assert str(root / "v2_OpenEnded_mscoco_train2014_questions.json") in str(err.value)
    assert str(root / "v2_mscoco_val2014_annotations.json") in str(err.value)


def test_vqav2_question_without_annotation(vqav2):
    vqa_files(vqav2, "train2014", [(458752000, 458752, "What?", NET)])
    vqa_files(vqav2, "train2014", [(7, 458752, "What?", None)])  # questions file only
    with pytest.raises(
        ConverterError, match=r"train2014_questions.json: questions\[0\]: question 7 has no entry"
    ):
        prepare("vqav2", vqav2)


def test_vqav2_malformed_answer_names_file_and_entry(vqav2):
    path = vqav2 / "v2_mscoco_val2014_annotations.json"
    data = json.loads(path.read_text())
    data["annotations"][1]["answers"][3] = {"answer_id": 4}
    write_json(path, data)
    with pytest.raises(
        ConverterError, match=rf"{at(path)}: annotations\[1\]: answers\[3\]: missing 'answer'"
    ):
        prepare("vqav2", vqav2)


# --- GQA ---


def gqa_question(image, question, answer, full):
    return {
        "semantic": [],
        "entailed": [],
        "equivalent": [],
        "question": question,
        "imageId": image,
        "isBalanced": True,
        "groups": {"global": None, "local": "13-bus_color"},
        "answer": answer,
        "semanticStr": "select: bus ->query: color",
        "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
        "types": {"detailed": "colorObj", "semantic": "attr", "structural": "query"},
        "fullAnswer": full,
    }


@pytest.fixture
def gqa(root):
    write_json(
        root / "train_balanced_questions.json",
        {
            "02930152": gqa_question("2354786", "Is the sky dark?", "yes", "Yes, the sky is dark."),
            "07333408": gqa_question("2354786", "What is on the wall?", "picture", "A picture."),
        },
    )
    write_json(
        root / "val_balanced_questions.json",
        {"05451384": gqa_question("2410913", "What color is the bus?", "red", "It is red.")},
    )
    write_json(
        root / "testdev_balanced_questions.json",
        {"20968379": gqa_question("n288870", "Who is standing?", "man", "The man.")},
    )
    return root


def gqa_sample(qid, split, image, question, answer, full):
    return {
        "id": f"gqa-{qid}",
        "split": split,
        "modality": "image",
        "media": f"../data/images/{image}.jpg",
        "question": question,
        "answers": [answer],
        "question_id": qid,
        "image_id": image,
        "fullAnswer": full,
        "types": {"detailed": "colorObj", "semantic": "attr", "structural": "query"},
    }


def test_gqa(gqa, out):
    assert prepared("gqa", gqa, out) == {
        "train.jsonl": [
            gqa_sample(
                "02930152", "train", "2354786", "Is the sky dark?", "yes", "Yes, the sky is dark."
            ),
            gqa_sample(
                "07333408", "train", "2354786", "What is on the wall?", "picture", "A picture."
            ),
        ],
        "val.jsonl": [
            gqa_sample("05451384", "val", "2410913", "What color is the bus?", "red", "It is red.")
        ],
        "test.jsonl": [
            gqa_sample("20968379", "test", "n288870", "Who is standing?", "man", "The man.")
        ],
    }


def test_gqa_malformed_question_names_file_and_question(gqa):
    path = gqa / "val_balanced_questions.json"
    write_json(path, {"05451384": {"imageId": "1", "question": "What?"}})
    with pytest.raises(ConverterError, match=rf"{at(path)}: question '05451384': missing 'answer'"):
        prepare("gqa", gqa)


def test_gqa_file_of_the_wrong_shape(gqa):
    write_json(gqa / "val_balanced_questions.json", [])
    with pytest.raises(ConverterError, match=r"val_balanced_questions\.json: expected an object"):
        prepare("gqa", gqa)


def test_missing_media_counts_each_file_once(gqa, out, caplog):
    prepare("gqa", gqa, out)  # two train questions share an image
    assert "3 of 3 media files are missing" in warnings(caplog)


# --- MSR-VTT captions ---


@pytest.fixture
def msrvtt(root):
    train_captions = [f"a man is talking {i}" for i in range(20)]
    sentences = []
    for i, caption in enumerate(train_captions):  # the official order interleaves videos
        sentences.append({"caption": caption, "video_id": "video0", "sen_id": 2 * i})
        if i < 2:
            sentences.append({"caption": f"a cat plays {i}", "video_id": "video6513", "sen_id": 1})
    video = {"category": 9, "url": "https://youtube.com/x", "start time": 1.0, "end time": 9.0}
    write_json(
        root / "train_val_videodatainfo.json",
        {
            "info": {},
            "videos": [
                {**video, "video_id": "video0", "split": "train", "id": 0},
                {**video, "video_id": "video6513", "split": "validate", "id": 6513},
            ],
            "sentences": sentences,
        },
    )
    write_json(
        root / "test_videodatainfo.json",
        {
            "info": {},
            "videos": [{**video, "video_id": "video7010", "split": "test", "id": 7010}],
            "sentences": [{"caption": "cars race", "video_id": "video7010", "sen_id": 180000}],
        },
    )
    return root


def msrvtt_sample(video_id, split, captions):
    return {
        "id": f"msrvtt-{video_id}",
        "split": split,
        "modality": "video",
        "media": f"../data/videos/{video_id}.mp4",
        "captions": captions,
        "video_id": video_id,
        "category": 9,
    }


def test_msrvtt(msrvtt, out):
    assert prepared("msrvtt", msrvtt, out) == {
        "train.jsonl": [
            msrvtt_sample("video0", "train", [f"a man is talking {i}" for i in range(20)])
        ],
        "val.jsonl": [msrvtt_sample("video6513", "val", ["a cat plays 0", "a cat plays 1"])],
        "test.jsonl": [msrvtt_sample("video7010", "test", ["cars race"])],
    }


def test_msrvtt_sentence_of_an_unknown_video(msrvtt):
    path = msrvtt / "test_videodatainfo.json"
    data = json.loads(path.read_text())
    data["sentences"].append({"caption": "x", "video_id": "video9"})
    write_json(path, data)
    with pytest.raises(ConverterError, match=rf"{at(path)}: sentences\[1\]: video 'video9' is not"):
        prepare("msrvtt", msrvtt)


# --- MSRVTT-QA and MSVD-QA ---


def qa(qid, question, answer, video, key="video_id"):
    return {"answer": answer, "id": qid, "question": question, key: video}


@pytest.fixture
def msrvtt_qa(root):
    write_json(
        root / "train_qa.json",
        [
            {**qa(0, "what is a man doing?", "talk", 0), "category_id": 2},
            {**qa(1, "who is talking?", "man", 0), "category_id": 1},
        ],
    )
    write_json(root / "val_qa.json", [qa(158581, "what plays?", "cat", 6513)])
    # ids restart per file in derived releases, some of which name the video instead
    write_json(root / "test_qa.json", [qa(0, "what races?", "car", "video7010.mp4", key="video")])
    return root


def videoqa_sample(name, split, qid, media, question, answer, **video):
    return {
        "id": f"{name}-{split}-{qid}",
        "split": split,
        "modality": "video",
        "media": media,
        "question": question,
        "answers": [answer],
        "question_id": qid,
        **video,
    }


def test_msrvtt_qa(msrvtt_qa, out):
    def sample(split, qid, number, question, answer, **category):
        media = f"../data/videos/video{number}.mp4"
        return videoqa_sample(
            "msrvtt-qa", split, qid, media, question, answer, video_id=f"video{number}", **category
        )

    assert prepared("msrvtt-qa", msrvtt_qa, out) == {
        "train.jsonl": [
            sample("train", 0, 0, "what is a man doing?", "talk", category_id=2),
            sample("train", 1, 0, "who is talking?", "man", category_id=1),
        ],
        "val.jsonl": [sample("val", 158581, 6513, "what plays?", "cat")],
        "test.jsonl": [sample("test", 0, 7010, "what races?", "car")],
    }


def test_videoqa_entry_without_video(msrvtt_qa):
    write_json(msrvtt_qa / "val_qa.json", [{"answer": "a", "id": 3, "question": "q?"}])
    with pytest.raises(ConverterError, match=r"val_qa.json: entry 0: expected 'video_id'"):
        prepare("msrvtt-qa", msrvtt_qa)


@pytest.fixture
def msvd_qa(root):
    # the release's mapping file has Windows line ends
    write_text(
        root / "youtube_mapping.txt", "-4wsuPCjDBc_5_15 vid1\r\n-7KMZQEsJW4_205_208 vid2\r\n"
    )
    write_json(root / "train_qa.json", [qa(0, "what is a man doing?", "cook", 1)])
    write_json(root / "val_qa.json", [qa(30933, "who is dancing?", "woman", 2)])
    write_json(
        root / "test_qa.json",
        [qa(43321, "what is cut?", "onion", 1), qa(43322, "what plays?", "dog", 2)],
    )
    return root


def test_msvd_qa(msvd_qa, out):
    def sample(split, qid, vid, clip, question, answer):
        media = f"../data/YouTubeClips/{clip}.avi"
        return videoqa_sample(
            "msvd-qa", split, qid, media, question, answer, video_id=vid, clip=clip
        )

    clips = {"vid1": "-4wsuPCjDBc_5_15", "vid2": "-7KMZQEsJW4_205_208"}
    assert prepared("msvd-qa", msvd_qa, out) == {
        "train.jsonl": [sample("train", 0, "vid1", clips["vid1"], "what is a man doing?", "cook")],
        "val.jsonl": [sample("val", 30933, "vid2", clips["vid2"], "who is dancing?", "woman")],
        "test.jsonl": [
            sample("test", 43321, "vid1", clips["vid1"], "what is cut?", "onion"),
            sample("test", 43322, "vid2", clips["vid2"], "what plays?", "dog"),
        ],
    }


def test_msvd_qa_video_missing_from_the_mapping(msvd_qa):
    write_json(msvd_qa / "val_qa.json", [qa(1, "q?", "a", 3)])
    with pytest.raises(
        ConverterError, match=r"val_qa.json: entry 0: vid3 is not in .*youtube_mapping.txt"
    ):
        prepare("msvd-qa", msvd_qa)


def test_msvd_qa_needs_the_mapping(msvd_qa):
    (msvd_qa / "youtube_mapping.txt").unlink()
    with pytest.raises(ConverterError, match=r"youtube_mapping.txt: not found \(the train split"):
        prepare("msvd-qa", msvd_qa)


def test_msvd_qa_converts_the_splits_present(msvd_qa, out, caplog):
    (msvd_qa / "train_qa.json").unlink()
    (msvd_qa / "val_qa.json").unlink()
    with caplog.at_level(logging.INFO):
        paths = prepare("msvd-qa", msvd_qa, out)
    assert paths == [out / "test.jsonl"]
    assert [s.id for s in read_manifest(out / "test.jsonl")] == [
        "msvd-qa-test-43321",
        "msvd-qa-test-43322",
    ]
    assert f"train split skipped: {msvd_qa / 'train_qa.json'} not found" in caplog.text
    assert f"val split skipped: {msvd_qa / 'val_qa.json'} not found" in caplog.text


def test_msvd_qa_split_without_the_mapping(msvd_qa):
    (msvd_qa / "train_qa.json").unlink()
    (msvd_qa / "youtube_mapping.txt").unlink()
    with pytest.raises(
        ConverterError,
        match=r"youtube_mapping.txt: not found \(the val split needs it beside val_qa.json\)",
    ):
        prepare("msvd-qa", msvd_qa)


def test_msvd_qa_mapping_alone_is_no_split(msvd_qa):
    for split in ("train", "val", "test"):
        (msvd_qa / f"{split}_qa.json").unlink()
    with pytest.raises(
        ConverterError, match=r"no annotation files found; expected .*test_qa.json.* \(each beside"
    ):
        prepare("msvd-qa", msvd_qa)


def test_msvd_qa_malformed_mapping_line(msvd_qa):
    write_text(msvd_qa / "youtube_mapping.txt", "a vid1\nb c vid2\n")
    with pytest.raises(ConverterError, match=r"youtube_mapping\.txt: line 2: expected"):
        prepare("msvd-qa", msvd_qa)


# --- AudioCaps ---


@pytest.fixture
def audiocaps(root):
    write_text(
        root / "train.csv",
        "audiocap_id,youtube_id,start_time,caption\n"
        '91139,r1ijmXaXVMk,30,"A man speaks, then a dog barks"\n'
        "58146,-0RWZT-miFs,120,Rain falls on a roof\n",
    )
    rows = [(97151, "--0w1YA1Hm4", 30), (103527, "-1nilez17Dg", 30)] * 5  # interleaved clips
    write_text(
        root / "val.csv",
        "audiocap_id,youtube_id,start_time,caption\n"
        + "".join(f"{a + i},{y},{t},caption {i // 2} of {y}\n" for i, (a, y, t) in enumerate(rows)),
    )
    write_text(
        root / "test.csv",
        "audiocap_id,youtube_id,start_time,caption\n"
        + "".join(f"{104 + i},7fmOlUlwoNg,20,test caption {i}\n" for i in range(5)),
    )
    return root


def audiocaps_sample(split, youtube_id, start, media, captions, ids):
    return {
        "id": f"audiocaps-{split}-{youtube_id}",
        "split": split,
        "modality": "audio",
        "media": media,
        "captions": captions,
        "youtube_id": youtube_id,
        "start_time": start,
        "audiocap_ids": ids,
    }


def test_audiocaps(audiocaps, out):
    def sample(split, youtube_id, start, captions, ids):
        media = f"../data/audio/{split}/{youtube_id}.wav"
        return audiocaps_sample(split, youtube_id, start, media, captions, ids)

    def val(youtube_id, first):
        captions = [f"caption {i} of {youtube_id}" for i in range(5)]
        return sample("val", youtube_id, 30, captions, list(range(first, first + 10, 2)))

    assert prepared("audiocaps", audiocaps, out) == {
        "train.jsonl": [
            sample("train", "r1ijmXaXVMk", 30, ["A man speaks, then a dog barks"], [91139]),
            sample("train", "-0RWZT-miFs", 120, ["Rain falls on a roof"], [58146]),
        ],
        "val.jsonl": [val("--0w1YA1Hm4", 97151), val("-1nilez17Dg", 103528)],
        "test.jsonl": [
            sample(
                "test",
                "7fmOlUlwoNg",
                20,
                [f"test caption {i}" for i in range(5)],
                [104, 105, 106, 107, 108],
            )
        ],
    }


def test_audiocaps_media_pattern(audiocaps, out):
    media = ["audio/r1ijmXaXVMk_30.wav", "audio/-0RWZT-miFs_120.wav"]
    manifests = prepared(
        "audiocaps", audiocaps, out, media_pattern="audio/{youtube_id}_{start_time}.wav"
    )
    assert [s["media"] for s in manifests["train.jsonl"]] == [f"../data/{m}" for m in media]


def test_audiocaps_malformed_row_names_file_and_line(audiocaps):
    path = audiocaps / "train.csv"
    write_text(path, path.read_text().replace(",120,", ",2m,"))
    with pytest.raises(
        ConverterError, match=rf"{at(path)}: line 3: 'start_time' should be an integer, got '2m'"
    ):
        prepare("audiocaps", audiocaps)


def test_audiocaps_short_row(audiocaps):
    path = audiocaps / "test.csv"
    write_text(path, path.read_text() + "109,7fmOlUlwoNg\n")
    with pytest.raises(ConverterError, match=rf"{at(path)}: line 7: missing 'caption'"):
        prepare("audiocaps", audiocaps)


# --- Clotho ---


def clotho_captions(name):
    return [f"{name[:-4]} sound {i}" for i in range(1, 6)]


def clotho_csv(path, files):
    header = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
    rows = "".join(
        ",".join(f'"{text}"' for text in [name, *clotho_captions(name)]) + "\n" for name in files
    )
    write_text(path, header + rows)


@pytest.fixture
def clotho(root):
    shared = "City Ambience w_ Car Passing_1-2.wav"  # really in two splits
    clotho_csv(root / "clotho_captions_development.csv", ["Distorted AM Radio noise.wav", shared])
    clotho_csv(root / "clotho_captions_validation.csv", [shared])
    clotho_csv(root / "clotho_captions_evaluation.csv", ["01 A pug, breathing 1_14_2008.wav"])
    return root


def test_clotho(clotho, out):
    def sample(split, folder, name):
        return {
            "id": f"clotho-{split}-{name}",
            "split": split,
            "modality": "audio",
            "media": f"../data/{folder}/{name}",
            "captions": clotho_captions(name),
            "file_name": name,
        }

    shared = "City Ambience w_ Car Passing_1-2.wav"
    assert prepared("clotho", clotho, out) == {
        "train.jsonl": [
            sample("train", "development", "Distorted AM Radio noise.wav"),
            sample("train", "development", shared),
        ],
        "val.jsonl": [sample("val", "validation", shared)],
        "test.jsonl": [sample("test", "evaluation", "01 A pug, breathing 1_14_2008.wav")],
    }


def test_clotho_missing_column(clotho):
    path = clotho / "clotho_captions_evaluation.csv"
    write_text(path, "file_name,caption_1\na.wav,x\n")
    with pytest.raises(ConverterError, match=rf"{at(path)}: header lacks column.*caption_2"):
        prepare("clotho", clotho)


# --- Annotation files that are not what they seem ---


def test_cp949_csv_names_file_offset_line_and_encoding(clotho):
    path = clotho / "clotho_captions_validation.csv"
    header = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
    data = (header + "rain.wav,비가 내린다,rain,drops,falls,water\n").encode("cp949")
    path.write_bytes(data)
    offset = len(header) + len("rain.wav,")
    with pytest.raises(ConverterError) as err:
        prepare("clotho", clotho)
    message = str(err.value)
    assert message.startswith(
        f"clotho: {path}: not UTF-8 text (byte 0x{data[offset]:02x} at offset {offset}, line 2); "
        "it looks like CP949 (Korean); re-encode it to UTF-8, e.g. `iconv -f CP949 -t UTF-8 "
        f"{shlex.quote(str(path))} > "
    )


def test_latin1_json_names_file_offset_line_and_encoding(msvd_qa):
    path = msvd_qa / "test_qa.json"
    text = '[\n{"answer": "café", "id": 1, "question": "what is it?", "video_id": 1}\n]\n'
    path.write_bytes(text.encode("latin-1"))
    offset = text.index("é")
    with pytest.raises(ConverterError) as err:
        prepare("msvd-qa", msvd_qa)
    message = str(err.value)
    assert f"{path}: not UTF-8 text (byte 0xe9 at offset {offset}, line 2)" in message
    assert "it looks like Windows-1252 / Latin-1" in message
    assert "iconv -f CP1252 -t UTF-8" in message


def test_undecodable_file_without_a_guess(msvd_qa):
    path = msvd_qa / "val_qa.json"
    path.write_bytes('[{"answer": "собака лает на улице"}]'.encode("cp1251"))  # no cheap guess
    with pytest.raises(ConverterError, match=r"could not be guessed.*iconv -f ITS-ENCODING"):
        prepare("msvd-qa", msvd_qa)


def test_cli_prints_an_encoding_error_in_one_line(clotho, capsys):
    path = clotho / "clotho_captions_evaluation.csv"
    path.write_bytes("file_name,caption_1\nx.wav,é\n".encode("latin-1"))
    assert main(["data", "prepare", "clotho", "--root", str(clotho)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"epalm data prepare: clotho: {path}: not UTF-8 text")
    assert "\n" not in error and "Traceback" not in error


def test_utf8_bom_is_skipped(coco, out):
    path = coco / "dataset_coco.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # what some Windows editors write
    assert len(read_manifest(prepare("coco", coco, out)[0])) == 2


LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:6f5e1b3c2a0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f\n"
    "size 145203987\n"
)


@pytest.mark.parametrize(
    ("name", "dataset", "file"),
    [
        ("coco", "coco", "dataset_coco.json"),
        ("audiocaps", "audiocaps", "val.csv"),
        ("msvd-qa", "msvd_qa", "youtube_mapping.txt"),
    ],
)
def test_git_lfs_pointer_is_named(request, name, dataset, file):
    root = request.getfixturevalue(dataset)
    write_text(root / file, LFS_POINTER)
    with pytest.raises(ConverterError) as err:
        prepare(name, root)
    assert str(err.value) == (
        f"{name}: {root / file}: is a Git LFS pointer (145,203,987 bytes of the real file not "
        "downloaded); run `git lfs pull` in its repository, or download the real file"
    )


def test_git_annex_link_without_content_is_named(audiocaps):
    path = audiocaps / "test.csv"
    path.unlink()
    path.symlink_to(".git/annex/objects/Pq/3x/SHA256E-s402246--0a1b.csv/SHA256E-s402246--0a1b.csv")
    with pytest.raises(
        ConverterError, match=rf"{at(path)}: a git-annex link whose content is not here; run `git"
    ):
        prepare("audiocaps", audiocaps)
