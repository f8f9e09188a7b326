"""Root conftest: puts the repository root on sys.path so `examples.dpfr_gland` imports in tests."""
