"""Files: model specs and loading, saving pruned models, atomic writes, torch.export programs."""
from .files import (
    FORMAT,
    VERSION,
    LoadedModel,
    atomic_save,
    atomic_write_text,
    check_output_path,
    load,
    parse_input_shape,
    plain_data,
    resolve_model,
    save,
)

__all__ = ["FORMAT", "VERSION", "LoadedModel", "atomic_save", "atomic_write_text", "check_output_path", "load",
           "parse_input_shape", "plain_data", "resolve_model", "save"]
