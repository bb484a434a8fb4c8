"""params.yaml's schema (the only reader of the file) and the catalog of file names stages exchange."""
