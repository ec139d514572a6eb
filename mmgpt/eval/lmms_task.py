"""VQA examples as an lmms-eval task folder, so lmms-eval scores the same questions eval_vqa.py does.

    python eval_vqa.py --model DIR --max-examples 500 --lmms-task tasks/mmgpt_vqa
    mmgpt serve --model DIR --port 8000 &
    lmms-eval --model openai --model_args model=NAME,base_url=http://127.0.0.1:8000/v1 \\
        --include_path tasks/mmgpt_vqa --tasks mmgpt_vqa

The folder holds the questions (questions.jsonl: question_id, question, answers, image), their images as PNG
(lossless, so the server decodes the pixels eval_vqa.py reads), `<task>.yaml` and `utils.py`. Prompts and
scoring are lmms-eval's own VQAv2 ones (no pre- or post-prompt; the official VQA accuracy over ten answers, a
single answer counting as ten, as eval_vqa.py does), so both tools' numbers come from independent scorers.
Nothing here imports lmms-eval: the folder is written without it and read only by it.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from mmgpt.data.example import Example

TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {questions}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  - version: 0.0
"""

UTILS = '''"""Written by mmgpt (mmgpt.eval.lmms_task): lmms-eval's own VQAv2 prompt and scoring over local images."""
from pathlib import Path

from lmms_eval.tasks.vqav2.utils import vqav2_doc_to_text as doc_to_text  # noqa: F401
from lmms_eval.tasks.vqav2.utils import vqav2_process_results_val as process_results  # noqa: F401
from PIL import Image

HERE = Path(__file__).resolve().parent


def doc_to_visual(doc):
    with Image.open(HERE / doc["image"]) as image:
        return [image.convert("RGB")]
'''


def check_task_folder(folder: str | Path) -> None:
    """ValueError unless `folder` can become a task folder: new or empty, named as a task may be."""
    folder = Path(folder)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", folder.name):
        raise ValueError(f"--lmms-task {folder}: the folder's name is the task's, so it must be letters, digits "
                         "and underscores, e.g. tasks/mmgpt_vqa")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"--lmms-task {folder}: exists and is not an empty folder; give a new one")


def write_lmms_task(examples: Sequence[Example], folder: str | Path, questions: dict, annotations: dict,
                    max_new_tokens: int = 16) -> Path:
    """Write the task folder of `examples` (with their official-format `questions` and `annotations`, as
    eval_vqa.py scores them); returns the folder. Its task name is the folder's name."""
    from mmgpt.images import load_image

    check_task_folder(folder)
    folder = Path(folder)
    task = folder.name
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index, (example, question, annotation) in enumerate(
            zip(examples, questions["questions"], annotations["annotations"])):
        image = f"images/{index}.png"
        load_image(example.image).convert("RGB").save(folder / image)
        lines.append(json.dumps({
            "question_id": question["question_id"], "question": question["question"],
            "answer": annotation["multiple_choice_answer"],
            # the official answer records, answer_id included: lmms-eval's scorer leaves out each answer by
            # comparing records, so ten identical {"answer": a} would leave none and score 0
            "answers": annotation["answers"], "image": image}))
    (folder / "questions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / f"{task}.yaml").write_text(TASK_YAML.format(
        task=task, questions=json.dumps(str((folder / "questions.jsonl").resolve())),
        max_new_tokens=max_new_tokens), encoding="utf-8")
    (folder / "utils.py").write_text(UTILS, encoding="utf-8")
    return folder
