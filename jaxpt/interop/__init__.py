"""Exchange formats with other libraries (Hugging Face peft adapters)."""

from jaxpt.interop.peft import attach, export_peft, import_peft, load_peft

__all__ = ['attach', 'export_peft', 'import_peft', 'load_peft']
