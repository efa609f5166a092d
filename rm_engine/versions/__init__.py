"""Model versions as files: the registry (atomic writes), copies in the database, exports to Hugging Face
folders."""
