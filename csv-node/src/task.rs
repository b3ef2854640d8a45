//! The node's background tasks: every task is spawned through [`Tasks`], which tracks it
//! and ends it when the node stops (a cancellation token, as the nbd server does), so a
//! stopping node waits for its tasks within a bound instead of leaving them running.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Spawns and stops the node's tasks. Cheap to clone; clones share one tracker.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Tasks {
    /// Runs `fut` on the runtime, in the current span, until it ends or the node stops.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.tracker.spawn(
            async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = fut => {}
                }
            }
            .in_current_span(),
        );
    }

    /// A token cancelled when the node stops (for loops that wind down by themselves).
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Whether the node is stopping.
    pub fn is_stopping(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Cancels every task and waits up to `bound` for them to end; returns how many
    /// were still running at the bound.
    pub async fn stop(&self, bound: Duration) -> usize {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(bound, self.tracker.wait())
            .await
            .is_err()
        {
            return self.tracker.len();
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_ends_every_task_within_its_bound() {
        let tasks = Tasks::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        for _ in 0..3 {
            let tx = tx.clone();
            tasks.spawn(async move {
                let _keep = tx;
                std::future::pending::<()>().await;
            });
        }
        drop(tx);
        assert_eq!(tasks.stop(Duration::from_secs(5)).await, 0);
        // Every task dropped its sender: the channel is closed.
        assert!(rx.recv().await.is_none());
        assert!(tasks.is_stopping());
    }
}
