"""Data: AdaTime-layout files, the synthetic generator, normalisation and batching."""

from shared.data.adatime import Domain, check_dir, load_domain, spec_from_files
from shared.data.loaders import Normalizer, epoch_batches, eval_chunks

__all__ = ["Domain", "Normalizer", "check_dir", "epoch_batches", "eval_chunks", "load_domain",
           "spec_from_files"]
