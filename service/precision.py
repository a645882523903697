"""What a bundle's cheaper encoders cost when they were made, and whether that is small enough
for the defaults to serve them: the int8 copy (`XC_ENCODER_PRECISION=auto`) and the student with
fewer layers (`XC_ENCODER_SIZE=auto`).

`python -m training quantize --data DIR` scores the fp32 and int8 encoders on the dev split and
writes an `Int8Check` into the manifest (`encoder.int8_check`); `python -m training distill`
writes a `StudentCheck` (`encoder.student.check`). `EncoderSpec.default_precision` and
`EncoderSpec.default_size` read them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# How far int8's dev nDCG@10 may fall from fp32's for int8 to be the encoder a bundle serves
# by default (`Int8Check`, written by `python -m training quantize --data`).
INT8_TOLERANCE = 0.003
# How far the student encoder's dev nDCG@10 may fall from the full encoder's for the student to
# be the encoder a bundle serves by default (`StudentCheck`, written by `python -m training
# distill`).
STUDENT_TOLERANCE = 0.005


class DevCheck(BaseModel):
    """What a cheaper encoder cost on the dev split when it was made: the bundle's default model
    scored with the reference and with the cheaper one (`costs`), and how much is allowed."""

    model_config = ConfigDict(extra="forbid")
    split: str = "dev"
    model: str
    tolerance: float

    def costs(self) -> tuple[float, float]:
        """(reference nDCG@10, cheaper nDCG@10)."""
        raise NotImplementedError

    @property
    def passed(self) -> bool:
        """The cheaper encoder costs at most `tolerance` nDCG@10: `auto` serves it."""
        reference, cheaper = self.costs()
        return cheaper >= reference - self.tolerance


class Int8Check(DevCheck):
    """The int8 encoder against fp32 (`XC_ENCODER_PRECISION=auto`)."""

    ndcg_at_10_fp32: float
    ndcg_at_10_int8: float
    tolerance: float = INT8_TOLERANCE

    def costs(self) -> tuple[float, float]:
        return self.ndcg_at_10_fp32, self.ndcg_at_10_int8


class StudentCheck(DevCheck):
    """The student encoder against the full one, each at its own default precision
    (`XC_ENCODER_SIZE=auto`)."""

    ndcg_at_10_full: float
    ndcg_at_10_student: float
    precision_full: str
    precision_student: str
    tolerance: float = STUDENT_TOLERANCE

    def costs(self) -> tuple[float, float]:
        return self.ndcg_at_10_full, self.ndcg_at_10_student
