"""One training loop for SFT, ORM and PRM: losses, optimizer, the sharded jitted step."""
