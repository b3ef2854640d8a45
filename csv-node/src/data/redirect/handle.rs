//! The node's redirection as the data path holds it: the switch's shared state, the
//! node's own path and what the driver last decided (for operators).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redirector::health::{Mode, Reason};
use tokio::sync::mpsc;
use volume::LunPath;

use super::switch::{Report, Shared, SwitchPath};
use crate::meta::now_unix_ms;

/// What operators see of the node's redirection.
#[derive(Debug, Clone)]
pub(crate) struct View {
    pub(crate) mode: Mode,
    pub(crate) reason: Reason,
    pub(crate) peer: Option<u64>,
    pub(crate) since_unix_ms: u64,
    pub(crate) data_addr: String,
}

/// The node's redirection: the switch's shared state, its own path, the driver's view.
#[derive(Debug)]
pub(crate) struct Redirect {
    pub(crate) shared: Arc<Shared>,
    pub(crate) direct: Arc<dyn LunPath>,
    pub(super) reports: Mutex<Option<mpsc::UnboundedReceiver<Report>>>,
    pub(crate) view: Mutex<View>,
}

impl Redirect {
    /// Wraps the node's own path `direct` (opened; blocking callers) in a switch.
    pub(crate) fn wrap(
        direct: Arc<dyn LunPath>,
        pause_limit: Duration,
    ) -> Result<(Arc<Redirect>, Arc<dyn LunPath>), volume::PathError> {
        let size = direct.size()?;
        let (shared, rx) = Shared::new(pause_limit);
        let switch: Arc<dyn LunPath> =
            Arc::new(SwitchPath::new(direct.clone(), shared.clone(), size));
        let r = Arc::new(Redirect {
            shared,
            direct,
            reports: Mutex::new(Some(rx)),
            view: Mutex::new(View {
                mode: Mode::Direct,
                reason: Reason::Healthy,
                peer: None,
                since_unix_ms: now_unix_ms(),
                data_addr: String::new(),
            }),
        });
        Ok((r, switch))
    }
}
