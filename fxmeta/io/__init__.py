"""Files: model specs and loading (``files``), saving and atomic writes (``saving``), example inputs
(``inputs``), output paths (``paths``), trust, schema, embedded architectures, torch.export programs."""
from .files import LoadedModel, load, resolve_model
from .inputs import parse_input_shape
from .saving import FORMAT, VERSION, atomic_save, atomic_write_text, check_output_path, plain_data, save

__all__ = ["FORMAT", "VERSION", "LoadedModel", "atomic_save", "atomic_write_text", "check_output_path", "load",
           "parse_input_shape", "plain_data", "resolve_model", "save"]
