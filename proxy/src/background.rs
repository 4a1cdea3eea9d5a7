//! One small runtime for the gateway's background I/O that belongs to no request and to no
//! shard: JWKS refreshes and the Redis connections of shared rate limits. Its thread starts
//! the first time something needs it (a config without such filters never starts it) and
//! lives as long as the process.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Handle;

/// Why the background runtime is not there.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot start the background runtime: {0}")]
pub struct BackgroundError(String);

static RUNTIME: OnceLock<Result<Handle, BackgroundError>> = OnceLock::new();

/// The runtime's handle, starting it on first use.
pub fn handle() -> Result<&'static Handle, BackgroundError> {
    RUNTIME.get_or_init(start).as_ref().map_err(Clone::clone)
}

/// Runs `task` on the background runtime.
pub fn spawn<F>(task: F) -> Result<(), BackgroundError>
where
    F: Future<Output = ()> + Send + 'static,
{
    handle()?.spawn(task);
    Ok(())
}

fn start() -> Result<Handle, BackgroundError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("sluice background")
        .build()
        .map_err(|e| BackgroundError(e.to_string()))?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("sluice background".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .map_err(|e| BackgroundError(e.to_string()))?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_tasks_from_outside_any_runtime() {
        let (tx, rx) = std::sync::mpsc::channel();
        super::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            let _ = tx.send(7);
        })
        .unwrap();
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)), Ok(7));
    }
}
