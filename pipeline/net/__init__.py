"""The network stage: fetching URLs safely and politely (imports nothing, so that its parts load alone)."""
