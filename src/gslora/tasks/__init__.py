"""Tasks (classification, detection): what each kind of model supplies to the one request pipeline."""

from gslora.tasks.base import TASK_MODULES, Subsets, Task, get_task, register_task

__all__ = ["TASK_MODULES", "Subsets", "Task", "get_task", "register_task"]
