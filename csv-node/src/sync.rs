//! Locking helpers shared by the node's subsystems.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`; a panic while it was held left plain data behind, which stays usable.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
