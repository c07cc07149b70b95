"""rankkit on ``torch.distributed``: P_Ω(R) and its completions across processes (issue 15).

Launch any script that calls these functions with ``torchrun`` (gloo on CPU, NCCL on GPU)::

    torchrun --nproc-per-node 4 my_script.py             # one host
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d \\
             --rdzv-endpoint $HEAD:29500 my_script.py     # four hosts (or srun under SLURM)

The process group is read from the environment ``torchrun`` sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT); see :func:`get_comm`. Without it every function runs
as a world of one process.

- :func:`build_reward_matrix`: the sharded, exact build (rows routed by leading tokens);
- :func:`reduce_omega2`: Lemma 3 per row, the column mask reduced;
- :func:`soft_impute`: softImpute-ALS on the row-partitioned matrix, per-rank checkpoints;
- :func:`fixed_rank_fit`: the fixed-rank certificate solver (ALS, RCG, RLM, "auto") on it;
- :func:`estimate_min_rank`: the same bracket as one process.
"""

from ._comm import ENV_VARS, Comm, RankFailedError, get_comm
from .build import (
           ShardedRewardMatrix,
           build_reward_matrix,
           choose_route_len,
           reduce_omega2,
           shard_dataset,
           shard_rows,
)
from .lowrank import ShardedLRKernels, fixed_rank_bytes, fixed_rank_fit
from .minrank import estimate_min_rank
from .softimpute import ShardedKernels, bytes_per_iteration, observed_mse, soft_impute

__all__ = ["ENV_VARS", "Comm", "RankFailedError", "get_comm", "ShardedRewardMatrix", "build_reward_matrix",
           "choose_route_len", "reduce_omega2", "shard_dataset", "shard_rows", "soft_impute", "observed_mse",
           "ShardedKernels", "bytes_per_iteration", "estimate_min_rank", "fixed_rank_fit", "ShardedLRKernels",
           "fixed_rank_bytes"]
