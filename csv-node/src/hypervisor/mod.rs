//! The hypervisor backend (docs/design/080): QEMU processes of the cluster's VMs, driven
//! over QMP.

pub mod qmp;
