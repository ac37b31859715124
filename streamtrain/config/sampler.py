"""The ``sampler`` section and each sampler's own parameters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from streamtrain.config.base import SamplerName, _Section


class UniformParams(_Section):
    num_negatives: int = Field(1024, ge=1)


class MnsParams(_Section):
    num_uniform: int = Field(1024, ge=1, description="B' uniform items mixed with the batch")


class CbnsParams(_Section):
    bank_size: int = Field(4096, ge=1)
    warmup_steps: int = Field(100, ge=0)


Resampler = Literal["multinomial", "systematic"]
_RESAMPLING_HELP = "how draws are taken from the importance weights; systematic is cheaper (sampling/resampling.py)"


class BirParams(_Section):
    num_samples: int | None = Field(None, ge=1, description="R draws per query; None = batch size")
    resampling: Resampler = Field("multinomial", description=_RESAMPLING_HELP)


class XirParams(_Section):
    cache_size: int | None = Field(None, ge=1, description="C cached ids; None = batch size")
    cache_draws: int | None = Field(None, ge=1, description="K_u per query; None = C/2")
    batch_draws: int | None = Field(None, ge=1, description="R_u per query; None = B/2")
    mix_lambda: float = Field(
        0.2, ge=0, le=1,
        description="weight of the cache term; 0.2 measured best on Gowalla (0.5, the paper's, lost; BENCHMARKS.md)",
    )
    resampling: Resampler = Field("multinomial", description=_RESAMPLING_HELP)
    occurrence_half_life_steps: float | None = Field(
        1000.0, ge=0, description="o's draw counts halve every this many steps (follows drift); None or 0 = never"
    )


class SamplerConfig(_Section):
    name: SamplerName = "xir"
    uniform: UniformParams = UniformParams()
    mns: MnsParams = MnsParams()
    cbns: CbnsParams = CbnsParams()
    bir: BirParams = BirParams()
    xir: XirParams = XirParams()
