"""Teacher placement: where a micro-batch's KD target comes from.

One module per placement (`colocated`, `dedicated`, `offline`), each a `TeacherSource`
(`megakd.teacher.base`) built from a `TeacherContext`; the registry that picks one for a run is
`megakd.placements`. Teacher weights are loaded in one place for all of them: `megakd.teacher.loading`.
"""

from megakd.teacher.base import TeacherContext, TeacherSource

__all__ = ["TeacherContext", "TeacherSource"]
