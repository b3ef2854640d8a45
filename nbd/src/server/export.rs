//! The export registry: named devices that can be added and removed while the server
//! runs. Removing an export hides it from new negotiations at once; the connections
//! already using it are told through its `removed` token and the removal can be
//! awaited until none of them holds the device any more.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::ServerError;
use super::observe::RequestObserver;
use crate::device::{BlockDevice, Capabilities};
use crate::proto::*;

/// Per-export settings chosen by whoever adds the export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Refuse writes even when the device could take them.
    pub read_only: bool,
    /// Shown by `nbdinfo --list` and NBD_INFO_DESCRIPTION.
    pub description: String,
    /// Told of every request the device answered (metrics); none: nothing is timed.
    pub observer: Option<Arc<dyn RequestObserver>>,
}

/// One export as the server sees it.
#[derive(Debug)]
pub struct Export {
    name: String,
    device: Arc<dyn BlockDevice>,
    options: ExportOptions,
    caps: Capabilities,
    removed: CancellationToken,
    /// Cancelled to close the connections still using a removed export at once.
    killed: CancellationToken,
    users: TaskTracker,
}

impl Export {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.device
    }

    pub fn description(&self) -> &str {
        &self.options.description
    }

    pub fn size(&self) -> u64 {
        self.device.size()
    }

    pub fn read_only(&self) -> bool {
        self.options.read_only || self.caps.read_only
    }

    /// The export's request observer, if any.
    pub fn observer(&self) -> Option<&dyn RequestObserver> {
        self.options.observer.as_deref()
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Advertised minimum block size: the device's, when it is a power of two no larger
    /// than 64 KiB (the spec's bounds), else 1.
    pub fn min_block(&self) -> u32 {
        let m = self.caps.min_block;
        if m.is_power_of_two() && m <= 65536 {
            m
        } else {
            1
        }
    }

    /// Transmission flags for a connection (DF only with structured replies).
    pub fn transmission_flags(&self, structured: bool) -> u16 {
        let c = &self.caps;
        let ro = self.read_only();
        let mut f = TFLAG_HAS_FLAGS;
        if ro {
            f |= TFLAG_READ_ONLY;
        }
        if c.can_flush {
            f |= TFLAG_SEND_FLUSH;
        }
        if c.can_fua {
            f |= TFLAG_SEND_FUA;
        }
        if c.rotational {
            f |= TFLAG_ROTATIONAL;
        }
        if c.can_trim && !ro {
            f |= TFLAG_SEND_TRIM;
        }
        if c.can_zero && !ro {
            f |= TFLAG_SEND_WRITE_ZEROES;
            if c.can_fast_zero {
                f |= TFLAG_SEND_FAST_ZERO;
            }
        }
        if structured {
            f |= TFLAG_SEND_DF;
        }
        if c.can_multi_conn {
            f |= TFLAG_CAN_MULTI_CONN;
        }
        if c.can_cache {
            f |= TFLAG_SEND_CACHE;
        }
        f
    }

    /// Cancelled when the export is removed.
    pub fn removed(&self) -> &CancellationToken {
        &self.removed
    }

    /// Cancelled when the connections still using the export must close at once.
    pub fn killed(&self) -> &CancellationToken {
        &self.killed
    }

    /// Registers a connection as a user of this export; `None` once it is removed.
    pub(crate) fn attach(&self) -> Option<tokio_util::task::task_tracker::TaskTrackerToken> {
        let token = self.users.token();
        if self.removed.is_cancelled() {
            return None;
        }
        Some(token)
    }
}

/// A removal in progress: `wait` resolves when no connection uses the device.
#[derive(Debug)]
pub struct ExportRemoval {
    export: Arc<Export>,
}

impl ExportRemoval {
    pub fn export(&self) -> &Arc<Export> {
        &self.export
    }

    /// Resolves once every connection that used the export has closed.
    pub async fn wait(&self) {
        self.export.users.wait().await;
    }

    /// Closes the connections still using the export now: their unanswered requests
    /// get no answer (the client sees the connection drop and may reconnect elsewhere).
    pub fn close_connections(&self) {
        self.export.killed.cancel();
    }
}

/// Named exports, shared by the accept loop and every connection.
#[derive(Debug, Default)]
pub struct ExportRegistry {
    map: RwLock<BTreeMap<String, Arc<Export>>>,
}

fn check_name(name: &str) -> Result<(), ServerError> {
    if name.len() > MAX_STRING_LEN || name.contains('\0') {
        return Err(ServerError::BadExportName(name.chars().take(64).collect()));
    }
    Ok(())
}

impl ExportRegistry {
    pub fn add(
        &self,
        name: &str,
        device: Arc<dyn BlockDevice>,
        options: ExportOptions,
    ) -> Result<Arc<Export>, ServerError> {
        check_name(name)?;
        if options.description.len() > MAX_STRING_LEN || options.description.contains('\0') {
            return Err(ServerError::BadDescription);
        }
        let caps = device.capabilities();
        let export = Arc::new(Export {
            name: name.to_owned(),
            device,
            options,
            caps,
            removed: CancellationToken::new(),
            killed: CancellationToken::new(),
            users: TaskTracker::new(),
        });
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(name) {
            return Err(ServerError::DuplicateExport(name.to_owned()));
        }
        map.insert(name.to_owned(), export.clone());
        Ok(export)
    }

    pub fn remove(&self, name: &str) -> Option<ExportRemoval> {
        let export = self
            .map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)?;
        export.removed.cancel();
        export.users.close();
        Some(ExportRemoval { export })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Export>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn list(&self) -> Vec<Arc<Export>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
