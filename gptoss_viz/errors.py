"""Errors the runtime raises for bad models or bad input; their messages are shown to users as they are."""


class GptOssVizError(Exception):
    """Base class: anything the app can catch and show to a user as a clear message."""


class ModelLoadError(GptOssVizError):
    """A model could not be found, downloaded or loaded (bad id, missing files, wrong shapes, bad config)."""


class InputError(GptOssVizError, ValueError):
    """A prompt or token sequence the model cannot run (empty, out-of-range ids, too long)."""
