"""Per-rank checkpoints in two alternating slots, shared by the sharded solvers."""

from __future__ import annotations

from pathlib import Path

from ._comm import Comm


class RankSlots:
    """Mixin for a checkpoint store: two alternating slots per rank,
    ``<path>.rank<r>of<P>.<slot>.npz``.

    A rank killed between the ranks' writes leaves the ranks at different iterations; the
    resume takes the latest iteration every rank holds, so one slot of the previous save
    always survives. Ctrl-C does not save (ranks may be in different iterations then).
    The host class provides ``read(path)``; ``iter_key`` names the saved iteration's field
    and ``what`` the solver in the collectives' names.
    """

    save_on_interrupt = False
    iter_key: str
    what: str

    def _init_slots(self, base: Path, comm: Comm) -> None:
        self.comm = comm
        self.slots = [base.with_name(f"{base.name}.rank{comm.rank}of{comm.size}.{s}.npz") for s in (0, 1)]
        self.next_slot = 0

    def load(self):
        have = {}
        for s, path in enumerate(self.slots):
            if path.is_file():
                z = self.read(path)
                have[int(z[self.iter_key])] = (s, z)
        every = self.comm.allgather_object(sorted(have), f"{self.what} checkpoint agreement")
        common = set(every[0]).intersection(*map(set, every[1:]))
        if not common:
            return None
        s, z = have[max(common)]
        self.next_slot = 1 - s
        return z

    def _slot(self) -> Path:
        """The slot to write now; the next save takes the other."""
        path = self.slots[self.next_slot]
        self.next_slot = 1 - self.next_slot
        return path

    def finish(self, keep: bool) -> None:
        if keep:
            return
        self.comm.barrier(f"{self.what} end")  # no rank deletes a slot another may still resume from
        for path in self.slots:
            if path.is_file():
                path.unlink()
