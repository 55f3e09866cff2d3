"""Base models: the static catalog, facts of folders on disk, offline pulls and availability per backend."""
