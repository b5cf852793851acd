"""The pack format and Muse's id rules: bytes in, bytes out; imports nothing else of ours."""
