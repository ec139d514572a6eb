"""Knowledge distillation: a frozen teacher model's answer-token distributions guide the student.

    accelerate launch train.py distill.teacher=PATH distill.alpha=0.5 distill.temperature=2.0

Per supervised answer token, loss = (1 - alpha) * CE(student, answer) + alpha * T^2 * KL(p_T(teacher) || p_T(student)),
with p_T = softmax(logits / T); T^2 keeps the soft term's gradient scale independent of T (Hinton et al., 2015).
The teacher runs in eval mode without gradients on the same batch, so it must read the same token ids as the
student: both tokenizers (prompt and answer) must have identical vocabularies.
"""
from __future__ import annotations

import torch
import torch.nn.functional as functional

from mmgpt.model import MMGPT, MMGPTOutput
from mmgpt.training.config import DistillConfig


def _vocab(tokenizer: object) -> dict[str, int]:
    return tokenizer.get_vocab() if tokenizer is not None else {}


def check_same_tokenizer(student: MMGPT, teacher: MMGPT, teacher_path: str) -> None:
    """Refuse a teacher whose tokenizers (answer or prompt) map any token to another id than the student's."""
    for name in ("tokenizer", "text_tokenizer"):
        mine, theirs = _vocab(getattr(student.processor, name, None)), _vocab(getattr(teacher.processor, name, None))
        if mine != theirs:
            differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            raise ValueError(
                f"distill.teacher {teacher_path}: its {name} differs from the student's ({len(theirs)} against "
                f"{len(mine)} tokens; e.g. {differ[:3]} have other ids): the teacher must share the student's "
                "tokenizer; train the student with init_from or the teacher's tokenizer"
            )


def load_teacher(path: str, student: MMGPT, device: torch.device) -> MMGPT:
    """The frozen teacher in eval mode on `device`, after checking it shares the student's tokenizer."""
    teacher = MMGPT.from_pretrained(path, device=device)
    check_same_tokenizer(student, teacher, path)
    teacher.requires_grad_(False)
    return teacher.eval()


def distill_token_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                       alpha: float, temperature: float) -> torch.Tensor:
    """(B, L, V) student and teacher logits, (B, L) targets (-100: unsupervised) -> per-token loss (B, L)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher logits {list(teacher_logits.shape)} differ from the student's "
                         f"{list(student_logits.shape)}: the two generators have different vocabulary sizes")
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    ce = functional.cross_entropy(student_logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    log_student = functional.log_softmax(student_logits / temperature, dim=-1)
    log_teacher = functional.log_softmax(teacher_logits / temperature, dim=-1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=-1)
    supervised = (targets != -100).to(kl.dtype)
    return ((1 - alpha) * ce + alpha * temperature**2 * kl) * supervised


def distill_loss_sum(out: MMGPTOutput, teacher: MMGPT, batch: dict, cfg: DistillConfig) -> torch.Tensor:
    """The distillation objective summed over the batch's supervised answer tokens (replaces out.loss_sum)."""
    with torch.no_grad():
        teacher_logits = teacher(**batch).logits
    answer_ids, answer_mask = batch["answer_ids"], batch["answer_mask"]
    targets = answer_ids[:, 1:].masked_fill(answer_mask[:, 1:] == 0, -100)
    return distill_token_loss(out.logits, teacher_logits, targets, cfg.alpha, cfg.temperature).sum()
