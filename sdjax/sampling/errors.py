"""The error every bad sampling input raises: a message naming the offending value."""


class SamplingInputError(ValueError):
    """A prompt, subject, box, mask or size the pipeline cannot use; the message names it."""
