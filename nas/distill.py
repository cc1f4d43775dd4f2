"""In-place distillation for the supernet (BigNAS, OFA): the largest path teaches the other paths of a step.

The teacher's outputs are detached; a student's loss is its usual detection loss plus ``weight`` x this term:

* classification: the KL divergence from the teacher's face/background probabilities to the student's, summed over
  all priors and divided by the batch's positive priors (the normalisation of the detection loss's own class term);
* regression: Smooth-L1 between the student's and the teacher's box and landmark offsets on the priors the teacher
  scores as faces (probability above ``face_threshold``), divided by their count.

A student so learns the teacher's soft ranking of priors on top of the hard labels, which carry little signal for a
small path early in training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

Predictions = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # loc (B, P, 4), logits (B, P, 2), landmarks


def distillation_loss(student: Predictions, teacher: Predictions, positives: torch.Tensor | int,
                      face_threshold: float = 0.5) -> torch.Tensor:
    """The distillation term of one student (float32, differentiable in the student only).

    Args:
        student: the student's ``(loc, logits, landmarks)``.
        teacher: the teacher's, same shapes (detached here).
        positives: positive priors of the batch (from the detection loss), for the class term's normalisation.
        face_threshold: teacher face probability from which a prior's regressions are distilled.
    """
    s_loc, s_logits, s_lmk = (t.float() for t in student)
    t_loc, t_logits, t_lmk = (t.detach().float() for t in teacher)
    norm = torch.as_tensor(positives, dtype=torch.float32, device=s_logits.device).clamp(min=1)
    t_prob = torch.softmax(t_logits, dim=-1)
    kl = F.kl_div(torch.log_softmax(s_logits, dim=-1), t_prob, reduction="sum")
    faces = t_prob[..., 1] > face_threshold
    count = faces.sum().clamp(min=1).float()
    regression = (F.smooth_l1_loss(s_loc[faces], t_loc[faces], reduction="sum")
                  + F.smooth_l1_loss(s_lmk[faces], t_lmk[faces], reduction="sum")) / count
    return kl / norm + regression
