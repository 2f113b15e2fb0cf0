"""Knowledge distillation: the verb `distill(student, teachers, DistillConfig, data=...)`, and the loss modules
it builds for slimkit.engine.fit (one technique per file).

    from slimkit.compress.distill import DistillConfig, distill
    distill(student, [teacher], DistillConfig(method="kd", temperature=4, alpha=0.5), data=bundle)
"""

from slimkit.compress.distill.api import DistillConfig, distill, load_teacher
from slimkit.compress.distill.base import (Distiller, FrozenTeacher, build_distiller, kd_divergence, list_distillers,
                                           register_distiller)
from slimkit.compress.distill.feature import FeatureKD, last_feature_layer
from slimkit.compress.distill.logit import LogitKD
from slimkit.compress.distill.multi_teacher import MultiTeacherKD
from slimkit.compress.distill.mutual import MutualLearning
from slimkit.compress.distill.self_distill import SelfDistill, self_distill

__all__ = ["Distiller", "FrozenTeacher", "register_distiller", "build_distiller", "list_distillers", "kd_divergence",
           "LogitKD", "MultiTeacherKD", "FeatureKD", "MutualLearning", "SelfDistill", "self_distill",
           "last_feature_layer", "DistillConfig", "distill", "load_teacher"]
