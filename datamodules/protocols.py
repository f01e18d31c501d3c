"""The class-incremental protocol (MiB, Cermelli et al. CVPR 2020; PLOP, Douillard et al. CVPR 2021; CoMFormer,
Cermelli et al. CVPR 2023): the tasks of a sequence are disjoint class subsets of one dataset; after step ``t``
the model is evaluated once on the dataset's eval split with the vocabulary of every class seen in steps
``0..t`` (pixels of classes not yet seen are ignored), and the scores are reported on the old classes (those of
step 0), the new ones (steps 1..t) and all of them.


The sequence file's side (the ``protocol:`` field, and that the tasks fit it) is checked where the file is read,
:func:`datamodules.sequence.check_class_incremental`.
"""

from __future__ import annotations

from dataclasses import replace

from datamodules.sequence import SequenceSpec, TaskSpec


def cumulative_task(spec: SequenceSpec, t: int) -> TaskSpec:
    """The evaluation task after step ``t``: the first task's dataset and eval split with the classes of steps
    ``0..t``, in step order (old classes first)."""
    ids = tuple(c for task in spec.tasks[: t + 1] for c in task.class_ids or ())
    full = spec.tasks[0].reader_vocabulary
    name = f"seen-after-{spec.tasks[t].name}"
    return replace(spec.tasks[0], name=name, vocabulary=full.subset([full.classes[i] for i in ids], name=name),
                   dataset_vocabulary=full, class_ids=ids)


def old_new(spec: SequenceSpec, t: int) -> tuple[list[int], list[int]]:
    """Local ids (in :func:`cumulative_task`'s vocabulary) of the old classes (step 0) and the new ones (steps
    1..t)."""
    return split_old_new([len(task.class_ids or ()) for task in spec.tasks[: t + 1]])


def split_old_new(step_sizes: list[int]) -> tuple[list[int], list[int]]:
    """Old (the first step's) and new (every later step's) local ids of a union vocabulary built step by step,
    from how many classes each step added."""
    n_old, n_all = (step_sizes[0] if step_sizes else 0), sum(step_sizes)
    return list(range(n_old)), list(range(n_old, n_all))
