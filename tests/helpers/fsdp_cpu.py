"""FSDP2 for CPU processes, for tests: accelerate applies FSDP on GPUs only, while FSDP2 itself
shards over gloo. Patching the accelerator's state after it is built lets the real trainer run
under `Accelerator.prepare`'s FSDP2 path (accelerate's own wrapping, grouping and optimizer
remapping) on a CPU machine."""

from __future__ import annotations


def enable() -> None:
    import accelerate
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    original = accelerate.Accelerator.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True,
            state_dict_type="FULL_STATE_DICT", cpu_ram_efficient_loading=False)
        if self.mixed_precision != "no":  # as accelerate's own FSDP set-up does
            plugin.set_mixed_precision(self.mixed_precision)
        self.state.fsdp_plugin = plugin
        # the process state keeps its own copy, and accelerate reads either
        self.state.distributed_type = PartialState().distributed_type = DistributedType.FSDP

    accelerate.Accelerator.__init__ = init
