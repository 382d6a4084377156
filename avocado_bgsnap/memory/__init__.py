"""Guest memory configurations: what backs the guest's RAM, and whether a
background snapshot of it must work on this host.

* :mod:`.config` -- :class:`MemoryConfig`: the RAMBlocks a VM's cfg asks
  avocado-vt for (machine RAM, NUMA nodes' backends, virtio-mem), read once
  from the params; pure, no host access;
* :mod:`.predict` -- :func:`expect_background_snapshot`: from the host's
  userfaultfd features, its hugepage pools, the QEMU version and the
  backends, whether QEMU must accept background-snapshot; :func:`judge`
  turns QEMU's answer and the prediction into a verdict;
* :mod:`.host_setup` -- :func:`prepared`: reserves the hugepages, mounts the
  hugetlbfs and sets the host THP mode a configuration needs, resolves its
  host paths into the VM's params, and puts everything back afterwards.
"""
