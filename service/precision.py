"""What the int8 copy of a bundle's encoder cost when it was made, and whether that is small
enough for `XC_ENCODER_PRECISION=auto` (the default) to serve it.

`python -m training quantize --data DIR` scores the fp32 and int8 encoders on the dev split and
writes an `Int8Check` into the manifest (`encoder.int8_check`); `EncoderSpec.default_precision`
reads it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# How far int8's dev nDCG@10 may fall from fp32's for int8 to be the encoder a bundle serves
# by default (`Int8Check`, written by `python -m training quantize --data`).
INT8_TOLERANCE = 0.003


class Int8Check(BaseModel):
    """The int8 encoder's cost, measured when it was made: dev nDCG@10 of both precisions."""

    model_config = ConfigDict(extra="forbid")
    split: str = "dev"
    model: str
    ndcg_at_10_fp32: float
    ndcg_at_10_int8: float
    tolerance: float = INT8_TOLERANCE

    @property
    def passed(self) -> bool:
        """int8 costs at most `tolerance` nDCG@10 (so it is the default: `XC_ENCODER_PRECISION`
        auto)."""
        return self.ndcg_at_10_int8 >= self.ndcg_at_10_fp32 - self.tolerance
