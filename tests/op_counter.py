"""Counting the aten operators a piece of code runs (tests/test_train.py, tests/test_augment_pipeline.py)."""

from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Counts the aten operators run inside it: ``kernels`` (operators that compute, not views of a tensor) and
    ``syncs``, those that make the host wait for a GPU: nonzero, .item(), bool(tensor), and a tensor made from
    host data (``lift_fresh``; on a GPU a blocking copy)."""

    SYNCS = frozenset(
        {"aten::nonzero", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::item", "aten::lift_fresh"}
    )

    def __init__(self):
        super().__init__()
        self.kernels = self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        self.syncs += name in self.SYNCS
        self.kernels += not (func.is_view or name in ("aten::lift_fresh", "aten::scalar_tensor"))
        return func(*args, **(kwargs or {}))
