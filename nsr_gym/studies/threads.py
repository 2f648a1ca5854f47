"""Scoped thread settings for a study's own computation, restored when it is done.

A study that pins torch (and numpy's BLAS) to a few threads should not leave the whole process
pinned: a notebook or a test that calls it afterwards gets its previous settings back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``; restore the previous count after.

    Args:
        n: Torch intra-op threads inside the block.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def limited_threads(n: int = 1) -> Iterator[None]:
    """Torch intra-op threads and the BLAS / OpenMP pools (``threadpoolctl``) at ``n`` inside the
    block; both restored after.

    Args:
        n: Threads of torch and of numpy's BLAS inside the block.
    """
    from threadpoolctl import threadpool_limits

    with torch_threads(n), threadpool_limits(limits=n):
        yield
