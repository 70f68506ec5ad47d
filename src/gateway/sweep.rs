//! Closing idle upstream connections past `timeouts.pool_idle_ms` when no
//! request comes to do it: the pool spawns no task per connection, so a
//! connection its server closed would otherwise sit in CLOSE_WAIT until
//! the next request to that upstream.

use super::Gateway;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::Arc;

pub struct PoolSweep(pub Arc<Gateway>);

#[async_trait]
impl BackgroundService for PoolSweep {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let every = self.0.upstream.sweep_interval();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            let closed = self.0.upstream.sweep_idle();
            if closed > 0 {
                tracing::debug!(closed, "idle upstream connections closed");
            }
        }
    }
}
