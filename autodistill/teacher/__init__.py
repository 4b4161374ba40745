"""The teacher, its outputs and their caches.

    cache          where the caches live ($AUTODISTILL_CACHE) and how an encoded split is keyed
    fine_tuned     the teacher: fine-tuned once per (backbone, dataset, training arguments), cached on disk
    outputs        its logits and pooled hidden states on a split, computed once and reused by every step
    outputs_cache  those outputs in a disk cache shared by every trial of a search
    source         what a KD step asks of a teacher: outputs for rows of a batch, cached or online
"""
