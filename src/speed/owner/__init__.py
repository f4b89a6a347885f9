"""The model owner: keys, one-time pads, decryption, privacy ledger, student."""
