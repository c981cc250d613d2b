"""Baselines: plain asyncio and asyncpg, no eventbus, run in their own process."""
