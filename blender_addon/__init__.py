"""Prolific Dreamer: text-to-3D with Variational Score Distillation, as a Blender extension."""
from . import jobs, operators, panel, preferences, properties

_MODULES = (preferences, properties, operators, panel)


def register():
    for module in _MODULES:
        module.register()
    jobs.restore_queue()


def unregister():
    jobs.shutdown()  # the backend child must not outlive the add-on
    for module in reversed(_MODULES):
        module.unregister()
