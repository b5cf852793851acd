"""The client: talks to a hub over HTTP and keeps clones in the Muse on-disk layout."""
