"""avocado-bgsnap: Avocado-VT plugin and test provider for QEMU background snapshots."""
