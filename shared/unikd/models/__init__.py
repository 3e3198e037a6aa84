"""Models of spec §2: teacher/student 1D-CNNs, adapter, discriminators, gradient reversal."""

from shared.unikd.models.adversarial import Adapter, DomainDisc, FeatureDisc, GradReverse, grad_reverse
from shared.unikd.models.cnn1d import CNN1d, TeacherEnsemble, count_macs, count_params, student_for, teacher_for

__all__ = [
    "Adapter", "CNN1d", "DomainDisc", "FeatureDisc", "GradReverse", "count_macs", "count_params",
    "grad_reverse", "student_for", "teacher_for", "TeacherEnsemble",
]
