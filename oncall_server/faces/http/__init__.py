"""The HTTP face: the webhook gateway (aiohttp) and its connection guard."""
