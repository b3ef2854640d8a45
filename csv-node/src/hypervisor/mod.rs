//! The hypervisor backend (docs/design/080): QEMU processes of the cluster's VMs, driven
//! over QMP.

pub mod host;
mod hotplug;
mod migrate;
pub mod qemu;
pub mod qmp;
mod recover;
mod runner;
pub mod supervisor;

pub use supervisor::Hypervisor;
