"""mpackhub: a hub for the Muse version-control system that serves prebuilt packs through signed URLs."""
