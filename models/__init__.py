"""Generator families, one file each, behind the protocol in `models.base`."""
