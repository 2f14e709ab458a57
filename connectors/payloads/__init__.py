"""Array payloads stored by reference: the claim-check store, codecs, chunks."""
