"""The TaskKnowledgeBank and everything that stores it: one package, one concept.

Modules, bottom to top (each imports only those above it in this list):

- :mod:`nsr_gym.bank.compression`: SVD compression of LoRA factors (NSR cycle, step 1);
- :mod:`nsr_gym.bank.checks`: :class:`BankFormatError`, the limits and dtypes a bank file may
  declare, typed manifest fields;
- :mod:`nsr_gym.bank.entry`: :class:`BankEntry`, one reserved subspace;
- :mod:`nsr_gym.bank.eviction`: which entry a full bank gives up, by slots or by bytes;
- :mod:`nsr_gym.bank.manifest`: the bank manifest's fields, their checks, its checksums;
- :mod:`nsr_gym.bank.files`: ``bank.safetensors`` plus a checksummed ``manifest.json`` that
  covers ``geometry.json`` too;
- :mod:`nsr_gym.bank.view`: :class:`BankView`, the per-slot arrays an observation reads, which
  the bank keeps current itself;
- :mod:`nsr_gym.bank.core`: the slots (:class:`TaskKnowledgeBank`), reserve, recall, eviction;
- :mod:`nsr_gym.bank.geometry`: whether a saved bank fits an env (:func:`check_bank_fits`);
- :mod:`nsr_gym.bank.disk_files`: the DiskBank's manifest and index, checked;
- :mod:`nsr_gym.bank.disk`: :class:`DiskBank`, a bank whose payloads live on disk.
"""

from __future__ import annotations

from nsr_gym.bank.checks import PAYLOAD_DTYPES
from nsr_gym.bank.compression import (
    LoraTruncation,
    compress_lora,
    dense_truncated_svd,
    payload_ranks,
    truncate_lora,
    truncate_lora_batch,
)
from nsr_gym.bank.core import EVICTION_POLICIES, SIMILARITY_THRESHOLD, TaskKnowledgeBank
from nsr_gym.bank.entry import BankEntry
from nsr_gym.bank.files import (
    BANK_FORMAT_VERSION,
    READABLE_BANK_VERSIONS,
    BankFormatError,
    load_bank,
    save_bank,
)
from nsr_gym.bank.geometry import check_bank_fits, env_geometry, write_geometry
from nsr_gym.bank.view import BankView

__all__ = ["BANK_FORMAT_VERSION", "EVICTION_POLICIES", "PAYLOAD_DTYPES", "READABLE_BANK_VERSIONS",
           "SIMILARITY_THRESHOLD", "BankEntry", "BankFormatError", "BankView", "LoraTruncation",
           "TaskKnowledgeBank", "check_bank_fits", "compress_lora", "dense_truncated_svd",
           "env_geometry", "load_bank", "payload_ranks", "save_bank", "truncate_lora",
           "truncate_lora_batch", "write_geometry"]
