"""Exceptions raised by Wan Express.

Every error a user can trigger derives from :class:`WanExpressError`; messages name the file, the key and
the remedy so that ComfyUI can show them as they are.
"""


class WanExpressError(Exception):
    """Base class of every error Wan Express raises on purpose."""


class ModelFormatError(WanExpressError):
    """A file or folder is not in a layout we can read, or its tensors contradict each other."""


class MissingComponentError(WanExpressError):
    """A required file (model shard, config, tokenizer, encoder) is absent."""


class UnsupportedModelError(WanExpressError):
    """The model is recognised but this version of Wan Express cannot run it."""


class IncompatibleLoraError(WanExpressError):
    """A LoRA does not fit the model it is applied to."""


class InvalidInputError(WanExpressError):
    """Tensors handed to a network have shapes or values it cannot accept."""


class NonFiniteLatentError(WanExpressError):
    """The latent became NaN or Inf during sampling."""


class NonFiniteOutputError(WanExpressError):
    """The VAE decoded NaN or Inf pixels."""


class OutOfGpuMemoryError(WanExpressError):
    """The GPU ran out of memory while loading or running a model; the message names the remedies."""


class Interrupted(WanExpressError):
    """An interrupt check asked a load, a sampler run, a VAE pass or an export to stop."""


class SamplingInterrupted(Interrupted):
    """The interrupt check asked the sampler (or a VAE pass) to stop."""


class UnsupportedVariantError(UnsupportedModelError):
    """A recognised Wan variant that cannot run yet (VACE, Animate).

    Attributes:
        variant: short name (``"vace"``, ``"animate"``).
        model: plain name (``"Wan2.1 VACE"``).
    """

    def __init__(self, message: str, variant: str, model: str):
        super().__init__(message)
        self.variant = variant
        self.model = model
