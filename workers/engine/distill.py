"""Logit distillation: a student learns the teacher's softened next-token distribution.

Loss = (1 − w) · the task's cross-entropy + w · T² · KL(teacher_T ‖ student_T) on the tokens the
task trains (the answers of an SFT row, every token of a causal-LM block), where _T is a
softmax at temperature T (Hinton et al. 2015; T² keeps the gradient scale of the soft term
comparable across temperatures). It needs one tokenizer for both: the same ids must mean the
same text, so a scratch student takes its teacher's tokenizer and a pretrained student must
already share it.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from workers.engine.config import TrainConfig
from workers.engine.loss_mask import IGNORE_INDEX
from workers.engine.models import Source, load_pretrained_tokenizer
from workers.engine.trainer import AtomicCheckpointTrainer


def teacher_source(config: TrainConfig) -> Source:
    assert config.teacher_path is not None
    if not config.teacher_path.exists():
        raise FileNotFoundError(f"teacher model folder not found: {config.teacher_path}")
    return Source(str(config.teacher_path), config.teacher_gguf_file)


def teacher_tokenizer(config: TrainConfig) -> PreTrainedTokenizerBase:
    return load_pretrained_tokenizer(teacher_source(config), config.block_size)


def load_teacher(config: TrainConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The frozen teacher; refused when its tokenizer is not the student's."""
    source = teacher_source(config)
    theirs = load_pretrained_tokenizer(source, config.block_size)
    if theirs.get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            "logit distillation needs the student to use the teacher's tokenizer: their "
            f"vocabularies differ ({len(theirs)} and {len(tokenizer)} tokens); choose a "
            "scratch student (it takes the teacher's tokenizer) or a base that shares it"
        )
    teacher = AutoModelForCausalLM.from_pretrained(
        source.location, dtype=torch.float32, **source.kwargs()
    )
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """T² · mean over trained positions of KL(teacher_T ‖ student_T) (next-token: shifted)."""
    vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])  # padded embedding rows
    student = student_logits[:, :-1, :vocab].float() / temperature
    teacher = teacher_logits[:, :-1, :vocab].float() / temperature
    trained = labels[:, 1:] != IGNORE_INDEX
    if not trained.any():
        return student.sum() * 0.0
    log_student = torch.log_softmax(student[trained], dim=-1)
    log_teacher = torch.log_softmax(teacher[trained], dim=-1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(-1)
    return kl.mean() * temperature**2


class DistillingTrainer(AtomicCheckpointTrainer):
    """The run's trainer with the teacher's soft targets mixed into the loss."""

    teacher: Any = None
    temperature: float = 2.0
    weight: float = 0.5

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        outputs = model(**inputs)
        hard = outputs.loss
        if self.weight == 0 or not model.training:
            # Evaluations report the task's own loss: comparable with a run without a teacher.
            return (hard, outputs) if return_outputs else hard
        device = outputs.logits.device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with torch.no_grad():
            teacher_logits = self.teacher(
                input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")
            ).logits
        soft = distillation_loss(outputs.logits, teacher_logits, inputs["labels"], self.temperature)
        loss = (1 - self.weight) * hard + self.weight * soft
        return (loss, outputs) if return_outputs else loss
