"""``cover-train``: fit COVER's gates and heads to a labelled set on frozen, cached backbones.

Modules, one concern each: :mod:`.dataset` (labels, checks, upstream's splits), :mod:`.features`
(the on-disk feature cache), :mod:`.losses` and :mod:`.schedule` (upstream's loss, LR schedule
and EMA), :mod:`.trainer` (one split's training loop), :mod:`.headfile` (the head file: save,
safe load, base check), :mod:`.pipeline` (all of it in order).
"""
