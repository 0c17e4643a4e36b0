"""The self-running update loop's library parts: the guard (prefmine.update.guard) that compares a candidate version
with the serving one on the same logged data, and publishing (prefmine.update.publish): the `current` symlink and
the guard log. The wiring (reading the store, building candidates, signalling serve) is cluster/update_loop.py."""
