//! `[metrics]` of the node configuration: the Prometheus endpoint (issue 16).

use std::net::SocketAddr;

use serde::Deserialize;

/// `[metrics]`: where the node serves `GET /metrics` (OpenMetrics text).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// The endpoint's TCP address (none: no endpoint, and `csvadm node metrics` says
    /// metrics are off). The endpoint has no authentication: bind a management address.
    pub listen: Option<SocketAddr>,
}

impl MetricsSection {
    /// Checks the address; the message names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(a) = self.listen
            && a.port() == 0
        {
            return Err((
                "metrics.listen",
                "needs a fixed port (scrapers are configured with it)".into(),
            ));
        }
        Ok(())
    }
}
