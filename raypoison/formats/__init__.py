"""Files exchanged with other tools: the reference benchmark's trial folders (export and import)."""
